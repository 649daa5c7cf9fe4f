"""Hearth's CPU kernels: the lean forward's small ops fused (RMSNorm, rotary embedding), its products.

At one decode row each of these is a chain of small aten ops (RMSNorm ~10, the rotary embedding
~6), and a SmolLM2 step runs 61 norms and 30 rotary embeddings: their dispatch, not their maths, is
what they cost. `fused.cpp` does each in one op (`torch.ops.hearth.rms_norm`, `torch.ops.hearth.rope`),
registered with torch's dispatcher, so the CPU decode traces record it as one node. It also holds
`argmax_rows`, the greedy pick and finite check over a step's logits in one pass
(`engine.sampling.filters.greedy_rows`).

The kernels are compiled once per machine with torch's own extension builder (the C++ compiler
torch uses, `-O3 -march=native`) into `<venv>/hearth-kernels/<torch version>-<cpu>/`;
`./scripts/serve` and `./scripts/test` build them at set-up (`engine.model.lean.fused.main`).
Where no compiler is found or the build fails, the forward runs the aten ops as before (logged
once). `HEARTH_FUSED=0` turns them off (to compare).

The same library holds Hearth's own products: `quant.cpp` (int8 weights on AVX-512 VNNI,
`Int8Linear`) and `dense.cpp` (bfloat16 weights on AVX512-BF16 and float32 ones on AVX-512F, the lean
forward's `Dot`); each says whether it was built for this CPU (`vnni()`, `bf16_dot()`, `f32_dot()`).
`attend.cpp` is float32 attention in one op (engine.model.attention), on AVX-512F as `f32_dot()`.

The fused small ops take bfloat16 activations (plain bfloat16 weights and the quantized kernels')
and float32 ones (plain float32 weights). They round where the aten chains round; a row's sum of
squares is added up in another (fixed) order, so a norm's output can differ from aten's in the
last bit of a few elements. A row's result depends on that row alone: batch invariance holds.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("hearth.engine")

SOURCES = sorted(Path(__file__).parent.glob("*.cpp"))  # fused, quant (int8), dense, attend
# (simd.h, their shared AVX-512 helpers, is tracked by the ninja build's header dependencies)
# -fopenmp: at::parallel_for splits work only when built with OpenMP; the library links the libgomp
# torch already loaded (same soname), so its threads are torch's own
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"]


def _cpuinfo(field: str) -> str | None:
    """A field of /proc/cpuinfo's first processor ("model name", "vendor_id"), None where absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    """The CPU's model name (a `-march=native` build is only good on the CPU it was built for)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def build_dir() -> Path:
    """Where the kernels are built: inside the virtual environment, per torch version and CPU."""
    cpu = hashlib.sha256(_cpu_name().encode()).hexdigest()[:12]
    return Path(sys.prefix) / "hearth-kernels" / f"torch-{torch.__version__}-{cpu}"


@functools.cache
def available() -> bool:
    """Whether `torch.ops.hearth` is loaded: built now if it was not (~30 s once), else False, logged."""
    if os.environ.get("HEARTH_FUSED", "1") == "0":
        log.info("fused CPU kernels off (HEARTH_FUSED=0)")
        return False
    try:
        from torch.utils.cpp_extension import load

        folder = build_dir()
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        load(
            name="hearth_fused",
            sources=[str(source) for source in SOURCES],
            build_directory=str(folder),
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
        torch.ops.hearth.rms_norm  # noqa: B018 (raises if the library did not register)
    except Exception as exc:  # no compiler, a failed build: the aten ops do the work
        log.warning("fused CPU kernels unavailable, running aten's ops instead: %.300s", exc)
        return False
    log.info("fused CPU kernels loaded from %s in %.1f s", folder, time.perf_counter() - start)
    return True


@functools.cache
def vnni() -> bool:
    """Whether the int8 products of `quant.cpp` (AVX-512 VNNI) are built and loaded."""
    return available() and bool(torch.ops.hearth.vnni())


@functools.cache
def bf16_dot() -> bool:
    """Whether the bfloat16 products of `dense.cpp` (AVX512-BF16) are built and loaded."""
    return available() and bool(torch.ops.hearth.bf16_dot())


@functools.cache
def f32_dot() -> bool:
    """Whether the float32 products of `dense.cpp` (AVX-512F) are built and loaded."""
    return available() and bool(torch.ops.hearth.f32_dot())


@functools.cache
def bf16_pairs() -> bool:
    """Whether bfloat16 weights are packed in pairs for `vdpbf16ps` (`pack_pairs`) rather than
    widened to float32 multiply-adds (`pack_columns`). Which is faster depends on the CPU: on AMD's
    (Zen 4 and 5) `vdpbf16ps` does ~1.75x the multiply-adds a second (measured on this project's
    EPYC), on the Intel Xeon measured the widened multiply-adds did ~1.8x. So: pairs on AMD, widened
    elsewhere; `HEARTH_BF16_PRODUCTS=pairs` or `widened` chooses. Either way a row's bits do not
    depend on the rows beside it (one machine gives one answer), but the two round differently."""
    if not bf16_dot():
        return False
    choice = os.environ.get("HEARTH_BF16_PRODUCTS", "auto")
    if choice in ("pairs", "widened"):
        return choice == "pairs"
    return _cpuinfo("vendor_id") == "AuthenticAMD"


def usable(x: torch.Tensor) -> bool:
    """Whether the fused kernels take activations like `x` (bfloat16 or float32 on the CPU) and are loaded."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32) and available()


def main() -> int:
    """Build (or find) the kernels; exit status 0 either way (the forward falls back without them)."""
    logging.basicConfig(level=logging.INFO, format="hearth: %(message)s")
    print(f"hearth: fused CPU kernels {'ready' if available() else 'unavailable (aten ops instead)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
