"""The lean forward's historical home: it lives in engine.model.lean now, written once for every
family it runs (Llama included); these names stay importable from here."""

from __future__ import annotations

from engine.model.lean import ARCHITECTURES, LeanLlama, LeanModel, lean_path, supported

__all__ = ["ARCHITECTURES", "LeanLlama", "LeanModel", "lean_path", "supported"]
