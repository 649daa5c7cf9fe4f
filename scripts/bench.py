"""Closed-loop load generator for OpenAI-compatible servers: Hearth, and optionally a peer to compare with.

For each concurrency level C, C workers each stream one `/v1/chat/completions` request after another
(temperature 0, `ignore_eos`, prompts that ask for long answers) until the level's request budget (or
--duration) is spent; `scripts/bench_client.py` measures tok/s, TTFT and latency, and the server's RSS
(start, peak, end per level, sampled every second from /proc).

Without --url the bench starts Hearth itself on a free port and stops it afterwards: one Hearth per
--hearth-config x --model pair, so quantized catalog entries sit in the same tables as the float32 one.
--compare also benchmarks a peer: `transformers serve --continuous-batching` on the same weights, or with
--peer llama-server, llama.cpp's `llama-server` (a build of yours: --llama-server PATH) on the model's GGUF
file (--peer-gguf, default the catalog's), `-t 2 -np 32` by default. Hearth keeps the catalog's dtype
and quantization (a GGUF model's own blocks) unless --hearth-dtype says otherwise, except against
`transformers serve`, where it runs in float32, the peer's precision. Servers never
run together: with --runs N each run starts every server afresh, one after the other, in an order that
is reversed every other run (fresh processes make the runs independent samples; alternating the order
spreads slow drifts of a shared machine over both). The last table holds the medians over the runs with
the ratios to the peer, then the CPU model and flags. --memory runs one long level instead (default 600 s
at c32) and writes RSS over time as CSV, with the slope per 100 requests and whether it stayed flat.
(The peer's quirks: scripts/bench_servers.py.)
"""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bench_client import LevelResult, Target, requests_for, run_level, warm_up
from bench_long import long_level, long_table
from bench_report import (
    LLAMA_PEER,
    PEER,
    PEERS,
    ServerRun,
    median_table,
    medians,
    ratio_table,
    table,
    write_csv,
    write_json,
)
from bench_servers import first_model_id, free_port, gguf_of, hearth_cmd, llama_cmd, peer_cmd, server
from bench_servers import model_dir as model_dir_of
from procinfo import cpu_info, cpu_line, hwm_mib, listening_pid, local_pid, rss_trend

TOPICS = [
    "the history of the Roman Empire",
    "how rivers shape landscapes over millions of years",
    "the invention of the printing press and its consequences",
    "the life cycle of stars",
    "the development of modern medicine",
    "the history of mathematics from Babylon to today",
    "how the internet works, layer by layer",
    "the causes and effects of the industrial revolution",
    "the ecology of tropical rainforests",
    "the history of music in Europe",
    "how airplanes fly",
    "the exploration of the oceans",
    "the history of chess",
    "the evolution of human language",
    "the architecture of medieval cathedrals",
    "the science of weather and climate",
]
PROMPTS = [f"Write a long, detailed essay about {t}. Use many paragraphs." for t in TOPICS]


@dataclass(frozen=True)
class Spec:
    """A server to benchmark: `kind` hearth or peer; for Hearth, the catalog and model it starts with."""

    label: str
    kind: str
    config: Path | None = None
    model: str | None = None


def specs(args: argparse.Namespace) -> list[Spec]:
    """One Hearth per --hearth-config x --model (labels naming the model and, with several, the
    catalog), then the peer with --compare."""
    configs: list[Path | None] = list(args.hearth_config) or [None]
    models: list[str | None] = list(args.model) or [None]
    out = []
    for config in configs:
        for model in models:
            parts = [model] if model else []
            if config is not None and (len(configs) > 1 or not model):
                parts.append(f"({config.name})")
            out.append(Spec(" ".join(["hearth", *parts]), "hearth", config, model))
    if len({s.label for s in out}) < len(out):
        out = [Spec(f"{s.label} #{i + 1}", s.kind, s.config, s.model) for i, s in enumerate(out)]
    if args.compare:
        out.append(Spec(LLAMA_PEER if args.peer == "llama-server" else PEER, "peer"))
    return out


def chat_fields(max_tokens: int) -> Any:
    def fields(i: int) -> dict[str, Any]:
        return {
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
        }

    return fields


def hearth_dtype(args: argparse.Namespace) -> str | None:
    return None if args.hearth_dtype == "catalog" else args.hearth_dtype


@contextmanager
def started(spec: Spec, args: argparse.Namespace) -> Iterator[Target]:
    """The spec's server, running (started here unless --url), as a target with its model and pid."""
    extra = {"ignore_eos": True}
    if spec.kind == "peer" and args.peer == "llama-server":
        gguf = args.peer_gguf or gguf_of(args.hearth_config[0] if args.hearth_config else None, args.model)
        port = free_port()
        with server("peer", llama_cmd(args, gguf.resolve(), port), port) as url:
            yield Target(spec.label, url, first_model_id(url), extra, pid=listening_pid(port))
    elif spec.kind == "peer":
        model_dir = (args.model_dir or model_dir_of(None)).resolve()
        port = free_port()
        cmd = peer_cmd(args, model_dir, port)
        with server("peer", cmd, port, env={"HF_HUB_OFFLINE": "1"}) as url:
            # The peer is pinned to the folder and wants exactly that string as the model name.
            yield Target(spec.label, url, first_model_id(url), extra, pid=listening_pid(port))
    elif args.url:
        url = args.url.rstrip("/")
        yield Target(spec.label, url, spec.model or first_model_id(url), extra, pid=local_pid(url, args.pid))
    else:
        port = free_port()
        cmd = hearth_cmd(port, args.hearth_python, spec.config, spec.model, hearth_dtype(args))
        with server("hearth", cmd, port) as url:
            yield Target(spec.label, url, spec.model or first_model_id(url), extra, pid=listening_pid(port))


def bench(spec: Spec, args: argparse.Namespace) -> tuple[ServerRun, float | None]:
    """Every level against the spec's server; the levels and the server's VmHWM at the end (MiB)."""
    fields = chat_fields(args.max_tokens)
    with started(spec, args) as target:
        target = warm_up(target, {**fields(0), "max_tokens": 8})
        print(f"[{target.name}] model {target.model!r} at {target.url} (pid {target.pid})", flush=True)
        levels: list[LevelResult] = []
        for c in args.concurrency:
            requests = requests_for(c, args.requests_per_level, args.duration)
            level = run_level(target, c, requests, args.duration, fields, args.rss_interval)
            row = level.row()
            print(
                f"[{target.name}] c={c}: {row['tok_s']} tok/s, ttft p50 {row['ttft_p50']} s, "
                f"{row['ok']} ok / {row['failed']} failed, RSS peak {row['rss_peak']} MiB",
                flush=True,
            )
            for r in level.results:
                if not r.ok:
                    print(f"[{target.name}]   failed: {r.error}", flush=True)
                    break
            levels.append(level)
        long = long_level(target, args.long_prompt) if args.long_prompt else None
        hwm = round(hwm_mib(target.pid), 1) if target.pid else None
    return ServerRun(spec.label, target.model, levels, long), hwm


# ---------------------------------------------------------------- modes


def compare(args: argparse.Namespace, info: dict[str, object]) -> tuple[int, dict[str, Any]]:
    """--runs runs of every server; per-run tables, then the medians."""
    todo = specs(args)
    runs: list[list[ServerRun]] = []
    raw_runs = []
    for i in range(args.runs):
        order = todo if i % 2 == 0 else todo[::-1]
        print(f"\n== run {i + 1}/{args.runs}: {', '.join(s.label for s in order)}", flush=True)
        done = [bench(spec, args) for spec in order]
        runs.append([run for run, _ in done])
        raw_runs.append({"run": i + 1, "servers": [{**run.raw(), "vm_hwm_mib": hwm} for run, hwm in done]})
    meds = medians(runs)
    print(
        f"\nmax_tokens={args.max_tokens}, chat completions streamed, prompts ask for long essays, "
        "temperature 0, ignore_eos where the server accepts it"
    )
    for i, run in enumerate(runs):
        print(f"\n## Run {i + 1}\n")
        for server_run in run:
            print(table(server_run.label, server_run.levels), end="\n\n")
        peer = next((s for s in run if s.label in PEERS), None)
        for server_run in run:
            if peer is not None and server_run is not peer:
                print(ratio_table(server_run, peer), end="\n\n")
    print(median_table(meds, args.runs))
    if args.long_prompt:
        for i, run in enumerate(runs):
            peer_label = next((s.label for s in run if s.label in PEERS), None)
            print(f"\nRun {i + 1}: {long_table([(s.label, s.long) for s in run if s.long], peer_label)}")
    print(f"\n{cpu_line(info)}")
    if args.csv:
        write_csv(args.csv, runs)
    failed = sum(level.failed for run in runs for s in run for level in s.levels)
    return (1 if failed else 0), {"runs": raw_runs, "medians": meds}


def memory(args: argparse.Namespace, info: dict[str, object]) -> tuple[int, dict[str, Any]]:
    """One long level per Hearth: RSS over time, its slope per 100 requests after the warm-up (the first
    10 % of the duration), and whether it stayed flat."""
    out: dict[str, Any] = {}
    csv_rows = []
    failed = 0
    for spec in specs(args):
        run, hwm = bench(spec, args)
        level = run.levels[0]
        failed += level.failed
        trend = rss_trend(level.rss, warm_up=args.duration * 0.1)
        row = level.row()
        print(f"\n{table(f'{run.label}: {args.duration:g} s at c{level.concurrency}', run.levels)}\n")
        print(
            f"RSS (MiB): start {row['rss_start']}, peak {row['rss_peak']}, end {row['rss_end']}, VmHWM {hwm}"
        )
        entry: dict[str, Any] = {**run.raw(), "vm_hwm_mib": hwm, "trend": None, "flat": None}
        if trend is None:
            print("RSS trend: too few samples or requests to fit")
        else:
            flat = trend.flat(args.flat_tolerance)
            print(
                f"RSS trend after the warm-up: {trend.slope_per_100:+.3f} MiB per 100 requests "
                f"({trend.requests} requests, {trend.samples} samples; fitted growth {trend.growth_mib:+.1f} "
                f"MiB, limit {args.flat_tolerance:g} % = {trend.base_mib * args.flat_tolerance / 100:.1f} "
                f"MiB): {'flat' if flat else 'NOT flat'}"
            )
            entry.update(trend=vars(trend), flat=flat)
        out[run.label] = entry
        csv_rows += [
            {
                "server": run.label,
                "t_s": round(s.t, 2),
                "requests_done": s.done,
                "rss_mib": round(s.rss_mib, 1),
            }
            for s in level.rss
        ]
    print(f"\n{cpu_line(info)}")
    if csv_rows:
        with open(args.rss_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
            writer.writeheader()
            writer.writerows(csv_rows)
        print(f"RSS over time: {args.rss_csv}")
    else:
        print("RSS over time: not sampled (no server pid; pass --pid)")
    return (1 if failed else 0), {"memory": out}


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="server to benchmark; default: start Hearth on a free port")
    p.add_argument("--pid", type=int, help="the --url server's pid, for RSS (default: found from its port)")
    p.add_argument(
        "--model", "--models", action="append", default=[],
        help="catalog id(s) to start Hearth with and request, comma-separated or repeated "
        "(default: the catalog's default; with --url: the model the server has loaded)",
    )  # fmt: skip
    p.add_argument(
        "--hearth-config", "--config", type=Path, action="append", default=[],
        help="models.yaml for the Hearth it starts; repeat to benchmark several catalogs side by side",
    )  # fmt: skip
    p.add_argument("--concurrency", help="comma-separated levels (default: 1,8,32; --memory: 32)")
    p.add_argument("--max-tokens", type=int, help="per request (default: 128)")
    p.add_argument("--requests-per-level", type=int, help="default: 2 x concurrency, at least 4")
    p.add_argument("--duration", type=float, help="seconds per level (--memory: default 600)")
    p.add_argument("--runs", type=int, default=1, help="repeat everything, report medians (default: 1)")
    p.add_argument(
        "--compare", action="store_true", help="also run `transformers serve --continuous-batching`"
    )
    p.add_argument("--memory", action="store_true", help="one long level per Hearth; RSS over time as CSV")
    p.add_argument("--rss-csv", default="bench-rss.csv", help="--memory's output (default: %(default)s)")
    p.add_argument("--rss-interval", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--flat-tolerance", type=float, default=1.0, help="--memory: most fitted growth, %%")
    p.add_argument(
        "--quick", action="store_true",
        help="smoke test: c1,c2, 8 tokens, 2 requests per level (--memory: c2 for 20 s)",
    )  # fmt: skip
    p.add_argument("--model-dir", type=Path, help="weights for the peer (default: Hearth's converted cache)")
    p.add_argument(
        "--hearth-python", type=Path, help="interpreter for Hearth (default: .venv's, else this one)"
    )
    p.add_argument(
        "--peer-python", type=Path,
        help="run the peer with this interpreter (it must have transformers[serving]) instead of .venv-peer",
    )  # fmt: skip
    p.add_argument(
        "--peer-device", default="cpu", help="`transformers serve --device` (default: %(default)s)"
    )
    p.add_argument(
        "--peer-dtype", default="float32", help="`transformers serve --dtype` (default: %(default)s)"
    )
    p.add_argument(
        "--hearth-dtype",
        help="`hearth serve --dtype` for unquantized models; 'catalog' keeps models.yaml's (default: "
        "catalog; float32, the transformers peer's precision, with --compare against it)",
    )
    p.add_argument(
        "--embeddings", action="store_true",
        help="embeddings mode (POST /v1/embeddings beside sentence-transformers): `--embeddings --help`",
    )  # fmt: skip
    p.add_argument(
        "--peer", choices=("transformers", "llama-server"), default="transformers",
        help="the --compare peer (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--llama-server", type=Path, help="--peer llama-server: the built llama-server binary")
    p.add_argument("--peer-gguf", type=Path, help="--peer llama-server: GGUF file (default: the model's)")
    p.add_argument("--peer-threads", type=int, default=2, help="llama-server -t (default: %(default)s)")
    p.add_argument("--peer-parallel", type=int, default=32, help="llama-server -np (default: %(default)s)")
    p.add_argument(
        "--peer-ctx", type=int, default=32 * 2048,
        help="llama-server -c, shared by the -np slots (default: %(default)s: 2,048 tokens each)",
    )  # fmt: skip
    p.add_argument("--long-prompt", type=int, help="also time the first token of ~N-token prompts")
    p.add_argument("--csv", help="write every run's per-level rows to this CSV file")
    p.add_argument("--json", help="write all raw figures (runs, requests, RSS samples, medians) to this file")
    args = p.parse_args(argv)
    args.model = [m.strip() for ms in args.model for m in ms.split(",") if m.strip()]
    fill_defaults(args)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency takes comma-separated integers, e.g. 1,8,32")
    if not args.concurrency or min(args.concurrency) < 1 or args.max_tokens < 1 or args.runs < 1:
        p.error("--concurrency levels, --max-tokens and --runs must be >= 1")
    if args.memory and (args.compare or len(args.concurrency) != 1):
        p.error("--memory takes one --concurrency level and no --compare")
    if args.url and args.hearth_config:
        p.error("--hearth-config is for the Hearth the bench starts, not with --url")
    if args.compare and args.peer == "llama-server" and not args.llama_server:
        p.error("--peer llama-server needs --llama-server PATH (a built llama.cpp llama-server)")
    return args


def fill_defaults(args: argparse.Namespace) -> None:
    """The defaults of the mode: full, --quick, --memory, --memory --quick."""
    if args.memory:
        args.concurrency = args.concurrency or ("2" if args.quick else "32")
        args.duration = args.duration or (20.0 if args.quick else 600.0)
    args.concurrency = args.concurrency or ("1,2" if args.quick else "1,8,32")
    args.max_tokens = args.max_tokens or (8 if args.quick else 128)
    if args.quick and args.requests_per_level is None and args.duration is None:
        args.requests_per_level = 2
    if args.hearth_dtype is None:
        # float32 only to match `transformers serve`; otherwise what a user of the catalog gets
        args.hearth_dtype = "float32" if args.compare and args.peer == "transformers" else "catalog"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--embeddings" in argv:  # its own options: scripts/bench_embed.py
        from bench_embed import main as embeddings

        return embeddings([a for a in argv if a != "--embeddings"])
    if "--multiturn" in argv:  # its own options: scripts/bench_multiturn.py
        from bench_multiturn import main as multiturn

        return multiturn([a for a in argv if a != "--multiturn"])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)  # so `finally` stops the servers on TERM too
    info = cpu_info()
    try:
        status, results = (memory if args.memory else compare)(args, info)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, httpx.HTTPError, subprocess.CalledProcessError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        settings["hearth_config"] = [str(c) for c in args.hearth_config]
        write_json(args.json, {"cpu": info, "settings": settings, **results})
    return status


def _raise_exit(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
