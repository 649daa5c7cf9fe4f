"""Hearth's inference engine: catalog, loading, continuous batching, sampling, detokenization.

The server imports only what is exported here.
"""

# ruff: noqa: E402  (torchao is imported quietly first: importing transformers' models imports it)
from contextlib import suppress

from engine.model.quantize import quiet_torchao_import

with suppress(ImportError):  # no torchao: only quantized models need it (engine.quantize.check)
    quiet_torchao_import()

from engine.catalog.config import ModelConfig
from engine.catalog.models_file import (
    HF_PREFIX,
    PACKAGE_PREFIX,
    Catalog,
    CatalogError,
    load_catalog,
    resolve_source,
)
from engine.catalog.recovery import RecoveryPolicy
from engine.catalog.registry import ModelLoadError, ModelRegistry, UnknownModelError, WrongTaskError
from engine.core.engine import ENGINE_FAILED, Engine, EngineDeadError, QueueFullError
from engine.core.faults import FAULTS_ENV, Faults, parse_faults
from engine.core.prompt import ChatTemplateError, render_chat
from engine.core.request import Delta, EngineStats, FinishReason, Logprob, SamplingParams
from engine.embed.embedder import MAX_INPUTS as MAX_EMBED_INPUTS
from engine.embed.embedder import Embedder, Embeddings, EmbedInputError, shorten
from engine.model.info import ModelInfo
from engine.model.lean.families import path_for_folder
from engine.sampling.grammar import GrammarSpec
from engine.sampling.json_bounds import bounded_schema

__all__ = [
    "ENGINE_FAILED",
    "FAULTS_ENV",
    "Faults",
    "parse_faults",
    "RecoveryPolicy",
    "HF_PREFIX",
    "PACKAGE_PREFIX",
    "resolve_source",
    "Catalog",
    "CatalogError",
    "EngineDeadError",
    "Embedder",
    "Embeddings",
    "EmbedInputError",
    "MAX_EMBED_INPUTS",
    "shorten",
    "WrongTaskError",
    "QueueFullError",
    "load_catalog",
    "ChatTemplateError",
    "Delta",
    "Engine",
    "EngineStats",
    "FinishReason",
    "GrammarSpec",
    "Logprob",
    "ModelConfig",
    "ModelInfo",
    "ModelLoadError",
    "ModelRegistry",
    "SamplingParams",
    "UnknownModelError",
    "bounded_schema",
    "render_chat",
    "path_for_folder",
]
