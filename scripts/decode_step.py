"""Time one eager decode step of many rows over the paged KV cache, this tree against another, A/B/A/B.

`--rows` sequences of `--context` tokens (their prompts prefilled first; `A-B`: lengths spread
evenly from A to B, as a closed-loop load's rows are) are decoded together, as
the engine's runner does at that batch size (CPU traces only take small batches, so many rows run
eagerly). Block tables interleave the sequences' blocks, as blocks handed out one at a time while
the sequences grow together are. Each round times `--steps` steps after a warm-up and prints the
median step; the CPU time of the stepping thread is printed too (torch's other threads are not in it).

    .venv/bin/python scripts/decode_step.py --rows 32 --context 300 --against HEAD~1 --rounds 4

`--against REV` extracts REV with `git archive` into a temporary folder and alternates rounds of
this tree and REV (each round a fresh process), so the slow drifts of a shared machine fall on
both; the last lines give each side's median of round medians and the ratios. On a busy machine
trust the thread CPU time with `--threads 1` (wall time there mostly measures the neighbours).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(root: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(median wall, median thread CPU) seconds of a decode step of `args.rows` rows, `root`'s engine."""
    sys.path.insert(0, str(root))
    import torch

    from engine import load_catalog
    from engine.core.blocks import blocks_for
    from engine.core.engine import Engine
    from engine.core.request import SamplingParams
    from engine.core.sequence import Sequence
    from engine.model.loader import load_model

    catalog = load_catalog(ROOT / "models.yaml")
    cfg = catalog.resolve(args.model) if args.model else catalog.default_model
    assert cfg is not None, args.model
    changes = {"dtype": args.dtype} if args.dtype else {}
    cfg = dataclasses.replace(
        cfg, **changes, device="cpu", max_batch_size=args.rows, max_context=args.max_context
    )
    engine = Engine(load_model(cfg, catalog.cache_dir), cfg)  # built, never started: we drive its runner
    runner = engine.runner
    threads = args.threads or len(os.sched_getaffinity(0))
    lo, _, hi = args.context.partition("-")
    first, last = int(lo), int(hi or lo)
    rows = args.rows
    contexts = [first + (last - first) * r // max(rows - 1, 1) for r in range(rows)]
    width = blocks_for(last + args.steps * 2 + 16)
    gen = torch.Generator().manual_seed(0)
    seqs = []
    for r in range(rows):
        prompt = torch.randint(100, 20000, (contexts[r],), generator=gen).tolist()
        seq = Sequence(f"s{r}", prompt, SamplingParams(temperature=0.0), lambda _: None)
        seq.block_table = [1 + i * rows + r for i in range(width)]  # interleaved, from block 1
        seqs.append(seq)
    with torch.inference_mode():
        runner.prepare(threads)
        for seq in seqs:  # prefill, one sequence a step
            logits, _ = runner.run([(seq, seq.num_tokens)])
            seq.num_computed = seq.num_tokens
            seq.token_ids.append(int(logits[0].argmax()))

        def step() -> None:
            logits, order = runner.run([(s, 1) for s in seqs])  # the runner may reorder them
            picks = logits.argmax(-1).tolist()
            for s, t in zip(order, picks, strict=True):
                s.num_computed += 1
                s.token_ids.append(int(t))

        for _ in range(3):
            step()
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
        wall, cpu = [], []
        for _ in range(args.steps):
            w, c = time.perf_counter(), time.thread_time()
            step()
            wall.append(time.perf_counter() - w)
            cpu.append(time.thread_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=32)
    p.add_argument(
        "--context",
        default="300",
        help="prompt tokens of each row: N, or A-B for lengths spread evenly from A to B (default 300)",
    )
    p.add_argument("--max-context", type=int, default=4096, help="the model's max_context (default 4096)")
    p.add_argument("--steps", type=int, default=20, help="decode steps timed per round (default 20)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per tree (default 4)")
    p.add_argument("--threads", type=int, help="torch threads (default: every core)")
    p.add_argument("--model", help="catalog id (default: the catalog's default model)")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 (default: the catalog's)")
    p.add_argument("--profile", action="store_true", help="print the ops' self times (to stderr)")
    p.add_argument("--against", help="a git revision to compare with, round after round")
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)  # one round of that tree's engine
    args = p.parse_args(argv)
    if args.root or args.profile:
        wall, cpu = measure(args.root or ROOT, args)
        print(f"{wall * 1e3:.2f} {cpu * 1e3:.2f}", flush=True)
        return 0
    given = list(argv if argv is not None else sys.argv[1:])
    passed = [
        a
        for i, a in enumerate(given)
        if not a.startswith("--against") and (i == 0 or given[i - 1] != "--against")
    ]
    with tempfile.TemporaryDirectory(prefix="hearth-decode-step-") as tmp:
        trees = {"this tree": ROOT}
        if args.against:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.against], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            trees[args.against] = Path(tmp)
        results: dict[str, list[float]] = {name: [] for name in trees}
        cpus: dict[str, list[float]] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name, tree in trees.items() if r % 2 == 0 else reversed(trees.items()):
                out = subprocess.run(
                    [sys.executable, __file__, *passed, "--root", str(tree)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(tree)},
                ).stdout.split()
                wall, cpu = float(out[-2]), float(out[-1])
                results[name].append(wall)
                cpus[name].append(cpu)
                print(f"round {r + 1} {name}: step {wall:.2f} ms (thread CPU {cpu:.2f} ms)", flush=True)
    medians = {name: statistics.median(v) for name, v in results.items()}
    cpu_medians = {name: statistics.median(v) for name, v in cpus.items()}
    for name, m in medians.items():
        print(
            f"{name}: median step {m:.2f} ms, {args.rows / m * 1e3:.1f} tok/s "
            f"(thread CPU {cpu_medians[name]:.2f} ms)"
        )
    if args.against:
        wall = medians["this tree"] / medians[args.against]
        cpu = cpu_medians["this tree"] / cpu_medians[args.against]
        print(f"this tree / {args.against}: step time {wall:.3f}, thread CPU {cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
