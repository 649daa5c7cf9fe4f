"""Perplexity of a catalog model on a text, scored the way llama.cpp's `llama-perplexity` scores it.

The text is tokenized once (with BOS where the model adds one, as llama.cpp does) and cut into
chunks of --ctx tokens; each chunk starts with BOS (where the tokenizer adds one) in place of its
first token and is run on its own; only the predictions of
its second half count (tokens ctx/2 + 1 .. ctx - 1), so every scored token has at least ctx/2 of
context. `llama-perplexity -m FILE -f TEXT -c CTX` on the same GGUF file is then comparable figure for
figure (it needs 2 x ctx tokens: 512 for tests/data/perplexity.txt, ~1,100 tokens).

    scripts/perplexity.py --model smollm2 --ctx 512 [--quantization none --dtype float32]

transformers' forward runs the model, with the products the server runs (`served_products`):
Hearth's own bfloat16 kernel where the CPU takes it (int8 linears take theirs as they are).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import load_catalog  # noqa: E402
from engine.model.lean.projections import Dot, bf16_kernel  # noqa: E402
from engine.model.loader import load_model  # noqa: E402


class _Served(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.proj = Dot([linear])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).reshape(*x.shape[:-1], -1)


def served_products(model: torch.nn.Module) -> int:
    """Give `model`'s linears the kernels the lean forward serves them with; returns how many moved."""
    moved = 0
    for name, module in list(model.named_modules()):
        if bf16_kernel([module]):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, _Served(module))
            moved += 1
    return moved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="catalog id or alias (default: the catalog's default)")
    p.add_argument("--config", type=Path, default=ROOT / "models.yaml")
    p.add_argument("--text", type=Path, default=ROOT / "tests" / "data" / "perplexity.txt")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (llama-perplexity -c)")
    p.add_argument("--quantization", help="override the catalog's (e.g. none, to dequantize)")
    p.add_argument("--dtype", help="override the catalog's")
    args = p.parse_args()
    catalog = load_catalog(args.config)
    cfg = catalog.resolve(args.model) if args.model else catalog.default_model
    if cfg is None:
        p.error(f"model {args.model!r} is not in the catalog")
    changes = {k: v for k, v in (("quantization", args.quantization), ("dtype", args.dtype)) if v}
    loaded = load_model(dataclasses.replace(cfg, **changes), catalog.cache_dir)
    print(f"{served_products(loaded.model)} linears on Hearth's kernels", flush=True)
    tok = loaded.tokenizer
    ids = tok(args.text.read_text(encoding="utf-8"))["input_ids"]  # with BOS where the model adds one
    bos = tok.bos_token_id if tok("a")["input_ids"][0] == tok.bos_token_id else None
    chunks = len(ids) // args.ctx
    if chunks < 1:
        p.error(f"the text has {len(ids)} tokens, fewer than --ctx {args.ctx}")
    first = args.ctx // 2
    nll, count = 0.0, 0
    for c in range(chunks):
        chunk = list(ids[c * args.ctx : (c + 1) * args.ctx])
        if bos is not None:
            chunk[0] = bos
        with torch.inference_mode():
            logits = loaded.model(torch.tensor([chunk])).logits[0].float()  # [ctx, V]
        targets = torch.tensor(chunk[first + 1 :])
        nll += torch.nn.functional.cross_entropy(logits[first:-1], targets, reduction="sum").item()
        count += len(targets)
        print(f"[{c + 1}] {math.exp(nll / count):.4f}", flush=True)
    print(
        f"{cfg.id} ({loaded.quantization}, {str(loaded.dtype).removeprefix('torch.')}): "
        f"{len(ids)} tokens, {chunks} chunks of {args.ctx}, {count} scored, "
        f"perplexity {math.exp(nll / count):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
