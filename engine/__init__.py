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
from engine.catalog.registry import ModelLoadError, ModelRegistry, UnknownModelError
from engine.core.engine import Engine, EngineDeadError, QueueFullError
from engine.core.prompt import ChatTemplateError, render_chat
from engine.core.request import Delta, EngineStats, FinishReason, Logprob, SamplingParams
from engine.model.lean.families import path_for_folder
from engine.sampling.grammar import GrammarSpec

__all__ = [
    "HF_PREFIX",
    "PACKAGE_PREFIX",
    "resolve_source",
    "Catalog",
    "CatalogError",
    "EngineDeadError",
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
    "ModelLoadError",
    "ModelRegistry",
    "SamplingParams",
    "UnknownModelError",
    "render_chat",
    "path_for_folder",
]
