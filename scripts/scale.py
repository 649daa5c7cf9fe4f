"""Scaling report: Hearth's output tok/s and TTFT p50/p99 against concurrency and against prompt length,
written as a CSV and a two-panel PNG (by default `docs/scaling.csv` and `docs/scaling.png`).

Sweep 1: a closed loop at each concurrency (default 1, 2, 4, 8, 16, 32, 64) with 64-token prompts.
Sweep 2: prompts of 64, 512 and 2048 tokens at concurrency 1 (prefill alone) and 8 (prefill among decodes).
Every request goes to `/v1/completions` as token ids, streamed, greedy, with `ignore_eos`, so its prompt
has exactly the length asked for and it generates exactly --max-tokens tokens; both are checked against
the usage the server reports. The ids are windows of a long random-word text tokenized with the model's
own tokenizer (read from the catalog), a different window for every request, so that no request can reuse
another's prompt from the KV cache (also checked: `cached_tokens`). The server's RSS is sampled too.

Without --url it starts Hearth (the helpers of `scripts/bench_servers.py`) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import csv
import random
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from bench_client import LevelResult, Target, requests_for, run_level, warm_up
from bench_servers import ROOT, first_model_id, free_port, hearth_cmd, model_dir, server
from procinfo import cpu_info, cpu_line, listening_pid, local_pid

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or has "
    "had not but first one their its new after who they have two been other all during time also into "
    "city river king war music water light stone forest winter market letter garden island machine story "
    "school mountain village bridge history science family season ocean engine theory church harbour "
    "slowly bright ancient northern quiet heavy simple golden early modern small great long young"
).split()
COLUMNS = [
    "sweep", "concurrency", "prompt_tokens", "max_tokens", "ok", "failed", "tok_s", "tok_per_req",
    "ttft_p50", "ttft_p99", "latency_p50", "wall", "rss_start", "rss_peak", "rss_end",
]  # fmt: skip


class Prompts:
    """Token-id prompts of exact lengths, each request a different window of one long tokenized text."""

    def __init__(self, tokenizer: Any, longest: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        ids: list[int] = []
        while len(ids) < 4 * longest + 1024:
            text = " ".join(rng.choice(WORDS) for _ in range(2000))
            ids += tokenizer.encode(text + ".\n", add_special_tokens=False)
        self.ids = ids
        self.rng = random.Random(seed + 1)

    def take(self, length: int) -> list[int]:
        start = self.rng.randrange(len(self.ids) - length)
        return self.ids[start : start + length]


def load_tokenizer(config: Path, model: str) -> tuple[Any, int]:
    """The model's tokenizer (from the folder Hearth loads it from) and its max_context."""
    from transformers import AutoTokenizer

    from engine.catalog.models_file import load_catalog

    cfg = load_catalog(config).resolve(model)
    if cfg is None:
        raise RuntimeError(f"model {model!r} is not in {config}")
    folder = model_dir(config, model)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True), cfg.max_context


def check(level: LevelResult, length: int, max_tokens: int) -> list[str]:
    """What went wrong with the level's requests: failures, wrong lengths, prompts reused from the cache."""
    problems = [f"failed: {r.error}" for r in level.results if not r.ok][:3]
    for r in level.good:
        if r.prompt_tokens is not None and r.prompt_tokens != length:
            problems.append(f"prompt of {r.prompt_tokens} tokens, expected {length}")
        if r.tokens != max_tokens:
            problems.append(f"{r.tokens} tokens generated, expected {max_tokens}")
        if r.cached_tokens and r.cached_tokens > 8:
            problems.append(f"{r.cached_tokens} prompt tokens came from the cache")
    return problems[:5]


def sweep(
    target: Target, args: argparse.Namespace, prompts: Prompts, name: str, points: list[tuple[int, int]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One level per (concurrency, prompt length); the CSV rows and the problems found."""
    rows, problems = [], []
    for c, length in points:

        def fields(i: int, length: int = length) -> dict[str, Any]:
            return {"prompt": prompts.take(length), "max_tokens": args.max_tokens}

        level = run_level(target, c, requests_for(c, args.requests_per_level, None), None, fields)
        row = {"sweep": name, "prompt_tokens": length, "max_tokens": args.max_tokens, **level.row()}
        rows.append(row)
        print(
            f"[{name}] c={c} prompt={length}: {row['tok_s']} tok/s, TTFT p50 {row['ttft_p50']} s "
            f"p99 {row['ttft_p99']} s, {row['ok']} ok / {row['failed']} failed, "
            f"RSS peak {row['rss_peak']} MiB",
            flush=True,
        )
        problems += [f"c={c} prompt={length}: {p}" for p in check(level, length, args.max_tokens)]
    return rows, problems


def measure(target: Target, args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    tokenizer, max_context = load_tokenizer(args.config, target.model)
    longest = max([args.prompt_tokens, *args.prompt_lengths])
    if longest + args.max_tokens > max_context:
        raise RuntimeError(f"prompt {longest} + max_tokens {args.max_tokens} > max_context {max_context}")
    prompts = Prompts(tokenizer, longest)
    target = warm_up(target, {"prompt": prompts.take(16), "max_tokens": 4})
    print(f"[hearth] model {target.model!r} at {target.url} (pid {target.pid})", flush=True)
    by_conc = [(c, args.prompt_tokens) for c in args.concurrency]
    by_length = [(c, n) for c in args.length_concurrency for n in args.prompt_lengths]
    rows, problems = sweep(target, args, prompts, "concurrency", by_conc)
    more_rows, more_problems = sweep(target, args, prompts, "prompt", by_length)
    return rows + more_rows, problems + more_problems


# ---------------------------------------------------------------- output


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Two panels: against concurrency, against prompt length; tok/s on the left axis, TTFT on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = [  # (axes, sweep, x column, x label, the column telling the lines apart)
        (axes[0], "concurrency", "concurrency", "concurrent requests", "prompt_tokens"),
        (axes[1], "prompt", "prompt_tokens", "prompt tokens", "concurrency"),
    ]
    for ax, name, x, xlabel, group in panels:
        mine = [r for r in rows if r["sweep"] == name]
        ttft_ax = ax.twinx()
        for i, key in enumerate(sorted({r[group] for r in mine})):
            points = sorted((r for r in mine if r[group] == key), key=lambda r: r[x])
            xs = [r[x] for r in points]
            tag = f"prompt {key}" if name == "concurrency" else f"c{key}"
            color = f"C{i}"
            ax.plot(xs, [r["tok_s"] for r in points], "o-", color=color, label=f"tok/s ({tag})")
            for q, style in (("ttft_p50", "s--"), ("ttft_p99", "^:")):
                ys = [r[q] if r[q] is not None else float("nan") for r in points]
                ttft_ax.plot(xs, ys, style, color=color, alpha=0.7, label=f"TTFT {q[-3:]} ({tag})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r[x] for r in mine}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("output tok/s")
        ax.set_ylim(bottom=0)
        ttft_ax.set_ylabel("TTFT (s, log)")
        ttft_ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        handles = ax.get_legend_handles_labels()
        more = ttft_ax.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
    axes[0].set_title("against concurrency")
    axes[1].set_title("against prompt length")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for r in rows:
        lines.append("| " + " | ".join("–" if r[k] is None else str(r[k]) for k in COLUMNS) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _ints(p: argparse.ArgumentParser, text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        p.error(f"{what} takes comma-separated positive integers")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="server to measure; default: start Hearth on a free port")
    p.add_argument("--pid", type=int, help="the --url server's pid, for RSS (default: found from its port)")
    p.add_argument(
        "--config", type=Path, default=ROOT / "models.yaml", help="catalog (also for the tokenizer)"
    )
    p.add_argument("--model", help="catalog id (default: the catalog's default / the --url server's model)")
    p.add_argument("--hearth-python", type=Path, help="interpreter for Hearth (default: .venv's)")
    p.add_argument("--concurrency", help="sweep 1 (default: 1,2,4,8,16,32,64)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="sweep 1's prompt length (default: 64)")
    p.add_argument("--prompt-lengths", help="sweep 2 (default: 64,512,2048)")
    p.add_argument("--length-concurrency", help="sweep 2's concurrency levels (default: 1,8)")
    p.add_argument("--max-tokens", type=int, help="per request (default: 128)")
    p.add_argument("--requests-per-level", type=int, help="default: 2 x concurrency, at least 4")
    p.add_argument("--csv", type=Path, help="default: docs/scaling.csv (--quick: a temp file)")
    p.add_argument("--png", type=Path, help="default: docs/scaling.png (--quick: a temp file)")
    p.add_argument(
        "--quick", action="store_true",
        help="smoke test: c1,c2; prompts 64, 256 at c1; 8 tokens; 2 requests per level; temp outputs",
    )  # fmt: skip
    args = p.parse_args(argv)
    quick = args.quick
    args.concurrency = _ints(p, args.concurrency or ("1,2" if quick else "1,2,4,8,16,32,64"), "--concurrency")
    args.prompt_lengths = _ints(
        p, args.prompt_lengths or ("64,256" if quick else "64,512,2048"), "--prompt-lengths"
    )
    args.length_concurrency = _ints(
        p, args.length_concurrency or ("1" if quick else "1,8"), "--length-concurrency"
    )
    args.max_tokens = args.max_tokens or (8 if quick else 128)
    if quick and args.requests_per_level is None:
        args.requests_per_level = 2
    out = Path(tempfile.gettempdir()) / "hearth-scaling-quick" if quick else ROOT / "docs"
    args.csv = args.csv or out / "scaling.csv"
    args.png = args.png or out / "scaling.png"
    if args.prompt_tokens < 1 or args.max_tokens < 1:
        p.error("--prompt-tokens and --max-tokens must be >= 1")
    return args


def run(args: argparse.Namespace, url: str, pid: int | None) -> int:
    target = Target(
        "hearth", url, args.model or first_model_id(url), {"ignore_eos": True}, "/v1/completions", pid
    )
    rows, problems = measure(target, args)
    info = cpu_line(cpu_info())
    print(f"\n{report(rows)}\n\n{info}")
    write_csv(args.csv, rows)
    plot(args.png, rows, f"Hearth, {target.model}, {args.max_tokens} tokens per request, greedy. {info}")
    print(f"wrote {args.csv} and {args.png}")
    for problem in problems:
        print(f"scale: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)  # so `finally` stops the server on TERM too
    try:
        if args.url:
            url = args.url.rstrip("/")
            return run(args, url, local_pid(url, args.pid))
        port = free_port()
        with server("hearth", hearth_cmd(port, args.hearth_python, args.config, args.model), port) as url:
            return run(args, url, listening_pid(port))
    except KeyboardInterrupt:
        print("scale: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, httpx.HTTPError) as e:
        print(f"scale: {e}", file=sys.stderr)
        return 1


def _raise_exit(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
