"""How close one decode stream is to the memory-bandwidth limit of this machine.

A decode step at one stream reads every weight once, so (weight bytes / read bandwidth) is the
shortest step this machine allows. This script measures the read bandwidth with the engine's thread
count (a `torch` sum over a buffer far bigger than the caches), loads a catalog model as the engine
serves it (same runner, lean forward, packing and traces), decodes one stream, and prints the limit
beside the measured step, split into the products, attention and the rest (small ops and per-step
overhead), from `torch.profiler`'s self times of the ops over the same kind of steps:

    .venv/bin/python scripts/bandwidth.py --quantization none --dtype bfloat16

Output is one `name: value` line per figure (see `FIELDS`). Timings on a shared machine are noisy;
`step_cpu_ms` (the stepping thread's CPU time) is not, with `--threads 1`: compare variants there.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file from anywhere: the repository's engine package

from engine import load_catalog  # noqa: E402
from engine.core.blocks import blocks_for  # noqa: E402
from engine.core.engine import Engine  # noqa: E402
from engine.core.request import SamplingParams  # noqa: E402
from engine.core.sequence import Sequence  # noqa: E402
from engine.model.loader import load_model  # noqa: E402
from engine.model.runner import ModelRunner  # noqa: E402
from engine.model.threads import available_cores  # noqa: E402

FIELDS = (
    "threads",
    "bandwidth_gb_s",
    "weight_mb",
    "limit_ms",
    "limit_tok_s",
    "step_ms",
    "step_tok_s",
    "step_cpu_ms",
    "of_limit_pct",
    "products_ms",
    "attention_ms",
    "rest_ms",
    "aten_calls_per_step",
)
# Ops whose self time counts as the products, and as attention (the rest is everything else)
PRODUCTS = {
    "mkldnn::_linear_pointwise",
    "mkldnn::_linear_pointwise.binary",
    "aten::_weight_int4pack_mm_for_cpu",
    "aten::_weight_int8pack_mm",
    "hearth::int8_linear",
    "hearth::packed_linear",
    "aten::mm",
    "aten::addmm",
}
ATTENTION = {
    "hearth::attend",
    "hearth::kv_write",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::bmm",
    "aten::_softmax",
    "aten::index_put_",
    "aten::_index_put_impl_",
    "aten::index_select",
}


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> float:
    """Bytes per second that `threads` threads read: the best of `repeats` sums over `mib` MiB."""
    torch.set_num_threads(threads)
    buffer = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    buffer.sum()  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best


def _bytes(t: Any) -> int:
    return int(t.numel() * t.element_size()) if isinstance(t, torch.Tensor) else 0


def weight_bytes(runner: ModelRunner) -> int:
    """Bytes of weights one decode step reads: every product's weights (the lean forward's, packed or
    quantized as they run) and the norms; without the lean forward, every parameter and buffer."""
    lean = runner.lean
    if lean is None:
        tensors = [*runner.model.parameters(), *runner.model.buffers()]
        return sum(_bytes(t) for t in {id(t): t for t in tensors}.values())
    total = 0
    for proj in lean._projections:
        module = getattr(proj, "module", None)
        if isinstance(module, torch.nn.Module):
            total += sum(_bytes(t) for t in [*module.parameters(), *module.buffers()])
        for part in getattr(proj, "parts", []):
            total += sum(_bytes(t) for t in [*part.parameters(), *part.buffers()])
        total += _bytes(getattr(proj, "weight", None)) + _bytes(getattr(proj, "bias", None))
    for layer in lean.layers:
        total += _bytes(layer.input_norm.weight) + _bytes(layer.mlp_norm.weight)
    return total


class Stream:
    """One sequence decoded by `runner` on this thread, greedily."""

    def __init__(self, runner: ModelRunner, prompt: list[int]) -> None:
        self.runner = runner
        self.seq = Sequence("bandwidth", prompt, SamplingParams(temperature=0.0), lambda _: None)
        # the blocks of a whole context, from block 1 (block 0 is the scratch block padding rows write to)
        self.seq.block_table = list(range(1, 1 + blocks_for(runner.max_context)))
        self._step(len(prompt))

    def _step(self, n: int) -> None:
        logits, _ = self.runner.run([(self.seq, n)])
        self.seq.num_computed += n
        self.seq.token_ids.append(int(logits[0].argmax()))

    def decode(self, steps: int, clock: Any = time.perf_counter) -> list[float]:
        """Seconds of each of `steps` decode steps (the forward and the greedy pick) on `clock`."""
        times = []
        for _ in range(steps):
            start = clock()
            self._step(1)
            times.append(clock() - start)
        return times


def breakdown(stream: Stream, steps: int) -> tuple[float, float, int]:
    """(products, attention) seconds per step and ops per step, from the profiler's self times."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stream.decode(steps)
    products = attention = 0.0
    ops = 0
    for event in prof.key_averages():
        self_s = event.self_cpu_time_total / 1e6
        if event.key in PRODUCTS:
            products += self_s
        elif event.key in ATTENTION:
            attention += self_s
        if event.key.startswith(("aten::", "mkldnn::", "hearth::")) and event.self_cpu_time_total > 0:
            ops += event.count
    return products / steps, attention / steps, ops // steps


def measure(runner: ModelRunner, threads: int, steps: int, context: int, mib: int = 512) -> dict[str, float]:
    """Every figure of `FIELDS` for `runner` (not yet prepared), decoding one stream."""
    bandwidth = read_bandwidth(threads, mib)
    with torch.inference_mode():
        runner.prepare(threads)
        stream = Stream(runner, list(range(100, 100 + context)))
        stream.decode(8)  # warm up: traces are recorded on first use, oneDNN kernels made
        step = statistics.median(stream.decode(steps))
        # this thread's CPU time: with 1 thread, the step's own work even on a busy machine
        cpu = statistics.median(stream.decode(steps, time.thread_time))
        products, attention, ops = breakdown(stream, max(steps // 2, 4))
    weights = weight_bytes(runner)
    limit = weights / bandwidth
    return {
        "threads": threads,
        "bandwidth_gb_s": bandwidth / 1e9,
        "weight_mb": weights / 1e6,
        "limit_ms": limit * 1e3,
        "limit_tok_s": 1 / limit,
        "step_ms": step * 1e3,
        "step_tok_s": 1 / step,
        "step_cpu_ms": cpu * 1e3,
        "of_limit_pct": 100 * limit / step,
        "products_ms": products * 1e3,
        "attention_ms": attention * 1e3,
        "rest_ms": max(step - products - attention, 0.0) * 1e3,
        "aten_calls_per_step": ops,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=str(ROOT / "models.yaml"))
    parser.add_argument("--model", help="catalog id (default: the catalog's default model)")
    parser.add_argument("--dtype", help="auto | float32 | bfloat16 (default: the catalog's)")
    parser.add_argument("--quantization", help="auto | gguf | none | int8 | int4 (default: the catalog's)")
    parser.add_argument("--threads", type=int, help="default: the model's `threads`, else every core")
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed (default 32)")
    parser.add_argument("--context", type=int, default=64, help="prompt tokens before decoding (default 64)")
    parser.add_argument("--traces", choices=("on", "off"), default="on", help="CPU decode traces")
    parser.add_argument("--buffer-mib", type=int, default=512, help="buffer summed for the bandwidth")
    args = parser.parse_args(argv)
    catalog = load_catalog(args.catalog)
    cfg = catalog.resolve(args.model) if args.model else catalog.default_model
    if cfg is None:
        parser.error(f"--model {args.model!r} is not in {args.catalog}")
    changes = {k: v for k, v in (("dtype", args.dtype), ("quantization", args.quantization)) if v}
    cfg = dataclasses.replace(cfg, **changes, device="cpu", cpu_graphs=args.traces == "on")
    threads = args.threads or cfg.threads or available_cores()
    engine = Engine(load_model(cfg, catalog.cache_dir), cfg)  # built, never started: we drive its runner
    figures = measure(engine.runner, threads, args.steps, args.context, args.buffer_mib)
    print(f"model: {cfg.id} ({engine.quantization}, {engine.runner.dtype})")
    for name in FIELDS:
        value = figures[name]
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
