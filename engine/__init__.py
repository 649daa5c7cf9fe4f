"""Hearth's inference engine: catalog, loading, continuous batching, sampling, detokenization.

The server imports only what is exported here.
"""

# ruff: noqa: E402  (torchao is imported quietly first: importing transformers' models imports it)
from contextlib import suppress

from engine.quantize import quiet_torchao_import

with suppress(ImportError):  # no torchao: only quantized models need it (engine.quantize.check)
    quiet_torchao_import()

from engine.catalog import HF_PREFIX, PACKAGE_PREFIX, Catalog, CatalogError, load_catalog, resolve_source
from engine.config import ModelConfig
from engine.engine import Engine, EngineDeadError, QueueFullError
from engine.grammar import GrammarSpec
from engine.prompt import ChatTemplateError, render_chat
from engine.registry import ModelLoadError, ModelRegistry, UnknownModelError
from engine.request import Delta, EngineStats, FinishReason, Logprob, SamplingParams

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
]
