"""Tables and files of `scripts/bench.py`: one table per server and run, the ratios to the peer, the
medians over runs, and the raw figures as JSON or CSV."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_client import LevelResult

PEER = "transformers serve"
LLAMA_PEER = "llama-server"  # --peer llama-server: llama.cpp's server on the same GGUF file
PEERS = (PEER, LLAMA_PEER)

COLUMNS = [
    ("concurrency", "conc"),
    ("ok", "ok"),
    ("failed", "failed"),
    ("tok_s", "output tok/s"),
    ("tok_per_req", "tok/req"),
    ("ttft_p50", "TTFT p50 (s)"),
    ("ttft_p99", "TTFT p99 (s)"),
    ("latency_p50", "latency p50 (s)"),
    ("wall", "wall (s)"),
    ("rss_start", "RSS start (MiB)"),
    ("rss_peak", "RSS peak (MiB)"),
    ("rss_end", "RSS end (MiB)"),
]
MEDIAN_KEYS = ("tok_s", "ttft_p50", "ttft_p99", "latency_p50", "rss_peak")


@dataclass
class ServerRun:
    """One server's levels in one run: `label` names the row (server and model), `model` what was sent."""

    label: str
    model: str
    levels: list[LevelResult]
    long: LevelResult | None = None  # --long-prompt's level (scripts/bench_long.py)

    def raw(self) -> dict[str, Any]:
        long = {"long_prompt": self.long.raw()} if self.long else {}
        return {"label": self.label, "model": self.model, "levels": [lv.raw() for lv in self.levels], **long}


def _cell(value: object) -> str:
    return "–" if value is None else str(value)


def table(title: str, levels: Sequence[LevelResult]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(h for _, h in COLUMNS) + " |"]
    lines.append("|" + "---:|" * len(COLUMNS))
    for level in levels:
        row = level.row()
        lines.append("| " + " | ".join(_cell(row[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def _ratio(a: float | int | None, b: float | int | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratio_table(ours: ServerRun, peer: ServerRun) -> str:
    lines = [
        f"### {ours.label} / {peer.label}",
        "",
        "| conc | tok/s ratio (>1: Hearth faster) | TTFT p50 ratio (<1: Hearth faster) |",
        "|---:|---:|---:|",
    ]
    for a, b in zip(ours.levels, peer.levels, strict=True):
        ra, rb = a.row(), b.row()
        lines.append(
            f"| {a.concurrency} | {_cell(_ratio(ra['tok_s'], rb['tok_s']))} | "
            f"{_cell(_ratio(ra['ttft_p50'], rb['ttft_p50']))} |"
        )
    return "\n".join(lines)


def medians(runs: Sequence[Sequence[ServerRun]]) -> dict[str, list[dict[str, Any]]]:
    """Per server label and concurrency: the median over runs of each of `MEDIAN_KEYS`, tok/s min and
    max, and (when the peer ran) the ratios of the medians to the peer's."""
    by_label: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for run in runs:
        for server in run:
            for level in server.levels:
                by_label.setdefault(server.label, {}).setdefault(level.concurrency, []).append(level.row())
    out: dict[str, list[dict[str, Any]]] = {}
    for label, levels in by_label.items():
        out[label] = []
        for conc, rows in levels.items():
            entry: dict[str, Any] = {"concurrency": conc, "runs": len(rows)}
            for key in MEDIAN_KEYS:
                values = [r[key] for r in rows if r[key] is not None]
                entry[key] = round(statistics.median(values), 3) if values else None
            entry["tok_s_min"] = min(r["tok_s"] for r in rows)
            entry["tok_s_max"] = max(r["tok_s"] for r in rows)
            entry["failed"] = sum(r["failed"] for r in rows)
            out[label].append(entry)
    name = next((label for label in PEERS if label in out), None)
    if name is not None:
        peer = {e["concurrency"]: e for e in out[name]}
        for label, entries in out.items():
            for e in entries:
                p = peer.get(e["concurrency"], {})
                e["tok_s_ratio"] = None if label == name else _ratio(e["tok_s"], p.get("tok_s"))
                e["ttft_p50_ratio"] = None if label == name else _ratio(e["ttft_p50"], p.get("ttft_p50"))
    return out


def median_table(meds: dict[str, list[dict[str, Any]]], runs: int) -> str:
    ratios = any(label in meds for label in PEERS) and len(meds) > 1
    head = "| server | conc | tok/s | tok/s min–max | TTFT p50 (s) | TTFT p99 (s) | latency p50 (s)"
    head += " | RSS peak (MiB)"
    head += " | tok/s ÷ peer | TTFT p50 ÷ peer |" if ratios else " |"
    lines = [f"### Medians of {runs} run(s)", "", head, "|---|" + "---:|" * (head.count("|") - 2)]
    for label, entries in meds.items():
        for e in entries:
            cells = [
                label, e["concurrency"], e["tok_s"], f"{e['tok_s_min']}–{e['tok_s_max']}", e["ttft_p50"],
                e["ttft_p99"], e["latency_p50"], e["rss_peak"],
            ]  # fmt: skip
            if ratios:
                cells += [e["tok_s_ratio"], e["ttft_p50_ratio"]]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Strict JSON (no NaN): missing figures are null."""
    Path(path).write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")


def write_csv(path: str | Path, runs: Sequence[Sequence[ServerRun]]) -> None:
    """One row per run, server and level."""
    rows = [
        {"run": i + 1, "server": server.label, "model": server.model, **level.row()}
        for i, run in enumerate(runs)
        for server in run
        for level in server.levels
    ]
    if not rows:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
