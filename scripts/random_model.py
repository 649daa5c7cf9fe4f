"""A random-weight model of real shapes, ready for a side-by-side run against llama-server.

    .venv/bin/python -m scripts.random_model --family llama --size 1b --out ~/rand1b \
        --llama-cpp PATH/llama.cpp --convert-python PY

writes into --out:
- `model/`: the model in bfloat16 safetensors with SmolLM2's tokenizer (tests/random_llama.py; the
  shapes of `scripts/gpu_stages.family_config`: `1b` is a 1.07 B Llama, a 1.5 B Qwen3 or a 0.75 B
  Gemma 3);
- with --llama-cpp (a built llama.cpp source tree; --convert-python must have sentencepiece):
  `rand-bf16.gguf`, converted by its `convert_hf_to_gguf.py`, and `rand-q4_1.gguf`, quantized from
  it by `llama-quantize`;
- `models.yaml`: Hearth's catalog, `rand-bf16` (the folder in bfloat16) and, with the GGUFs,
  `rand-gguf` (the Q4_1 file's own blocks).

Then, as in the README's 1 B run:

    ./scripts/bench --compare --peer llama-server --llama-server PATH/llama-server --hearth-dtype catalog \
        --config ~/rand1b/models.yaml --model rand-bf16 --peer-gguf ~/rand1b/rand-bf16.gguf --long-prompt 808
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from scripts.gpu_check import FAMILIES


def convert_to_gguf(llama_cpp: Path, python: str, model_dir: Path, out: Path, outtype: str) -> Path:
    """`model_dir` as a GGUF file `out` of `outtype` (f32, bf16, ...), by llama.cpp's converter."""
    env = {**os.environ, "PYTHONPATH": str(llama_cpp / "gguf-py")}
    convert = [python, str(llama_cpp / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", outtype]
    subprocess.run([*convert, "--outfile", str(out)], check=True, env=env, capture_output=True)
    return out


def quantize_gguf(llama_cpp: Path, source: Path, out: Path, kind: str) -> Path:
    """`source` quantized to `kind` (Q4_1, Q4_K_M, ...) by llama.cpp's `llama-quantize`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(llama_cpp / "build" / "bin" / "llama-quantize"), str(source), str(out), kind],
                   check=True, capture_output=True)  # fmt: skip
    return out


def catalog(out: Path, ggufs: bool) -> str:
    lines = [
        "default: rand-bf16",
        f"cache_dir: {out / 'cache'}",
        "models:",
        "  - id: rand-bf16",
        f"    source: {out / 'model'}",
        "    dtype: bfloat16",
        "    max_context: 2048",
    ]
    if ggufs:
        lines += [
            "  - id: rand-gguf",
            f"    source: {out}",
            "    gguf_file: rand-q4_1.gguf",
            "    quantization: gguf",
            "    max_context: 2048",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/random_model", description=__doc__.splitlines()[0])
    p.add_argument("--family", default="llama", choices=FAMILIES)
    p.add_argument("--size", default="1b", choices=("tiny", "small", "1b"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--llama-cpp", type=Path, help="a built llama.cpp source tree: also write the GGUFs")
    p.add_argument("--convert-python", default=sys.executable, help="python for convert_hf_to_gguf.py")
    args = p.parse_args(argv)
    import torch

    from scripts.gpu_stages import family_config
    from tests.random_llama import build_random_model, find_tokenizer_dir

    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        p.error("no SmolLM2 tokenizer files: start Hearth once (scripts/serve) to convert the model")
    out = args.out.expanduser().resolve()
    model_dir = out / "model"
    build_random_model(model_dir, tokenizer, family_config(args.family, args.size), dtype=torch.bfloat16)
    print(f"{model_dir}: random {args.family} {args.size}, bfloat16")
    if args.llama_cpp is not None:
        bf16 = convert_to_gguf(args.llama_cpp, args.convert_python, model_dir, out / "rand-bf16.gguf", "bf16")
        quantize_gguf(args.llama_cpp, bf16, out / "rand-q4_1.gguf", "Q4_1")
        print(f"{bf16} and {out / 'rand-q4_1.gguf'}: for llama-server")
    (out / "models.yaml").write_text(catalog(out, args.llama_cpp is not None))
    print(f"{out / 'models.yaml'}: Hearth's catalog")
    return 0


if __name__ == "__main__":
    sys.exit(main())
