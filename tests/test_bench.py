"""The benchmark tools in their --quick forms, against a real server: `scripts/scale.py` writes a
well-formed CSV and a two-panel PNG, `scripts/bench.py --memory` an RSS-over-time CSV and a JSON with
the trend, `scripts/bench.py --runs 2` raw figures and their medians, and several Hearth catalogs in
one run sit side by side. Shapes and signs only: nothing here is timed."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.launch import ROOT, Server, small_catalog

pytestmark = pytest.mark.slow  # the benchmark scripts, each a few runs against a server

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SCALE_COLUMNS = [
    "sweep", "concurrency", "prompt_tokens", "max_tokens", "ok", "failed", "tok_s", "tok_per_req",
    "ttft_p50", "ttft_p99", "latency_p50", "wall", "rss_start", "rss_peak", "rss_end",
]  # fmt: skip


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *args]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_scale_quick_writes_csv_and_png(server: Server, tmp_path: Path) -> None:
    out_csv, out_png = tmp_path / "scaling.csv", tmp_path / "scaling.png"
    run_script(
        "scripts/scale.py", "--quick", "--url", server.url, "--csv", str(out_csv), "--png", str(out_png)
    )

    columns, rows = read_csv(out_csv)
    assert columns == SCALE_COLUMNS
    by_conc = [r for r in rows if r["sweep"] == "concurrency"]
    by_length = [r for r in rows if r["sweep"] == "prompt"]
    assert [(int(r["concurrency"]), int(r["prompt_tokens"])) for r in by_conc] == [(1, 64), (2, 64)]
    assert [(int(r["concurrency"]), int(r["prompt_tokens"])) for r in by_length] == [(1, 64), (1, 256)]
    for r in rows:
        assert int(r["ok"]) == 2 and int(r["failed"]) == 0
        assert float(r["tok_per_req"]) == int(r["max_tokens"]) == 8  # ignore_eos: every token generated
        assert float(r["tok_s"]) > 0 and float(r["wall"]) > 0
        assert 0 < float(r["ttft_p50"]) <= float(r["ttft_p99"])
        assert float(r["ttft_p50"]) < float(r["latency_p50"])
        assert 0 < float(r["rss_start"]) <= float(r["rss_peak"])

    import matplotlib.image

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(out_png).shape
    assert width > height > 200  # two panels side by side


def expected_cpu_flags() -> dict[str, bool]:
    """Which of the flags the bench reports this machine's CPU has, read from /proc/cpuinfo here."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    have = next(
        (set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set()
    )
    names = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
    return {name: name in have for name in names}


def test_bench_memory_quick_writes_rss_over_time(server: Server, tmp_path: Path) -> None:
    rss_csv, out_json = tmp_path / "rss.csv", tmp_path / "memory.json"
    done = run_script(
        "scripts/bench.py", "--memory", "--quick", "--duration", "8", "--url", server.url,
        "--rss-csv", str(rss_csv), "--json", str(out_json),
    )  # fmt: skip
    assert "RSS trend" in done.stdout

    columns, rows = read_csv(rss_csv)
    assert columns == ["server", "t_s", "requests_done", "rss_mib"]
    assert len(rows) >= 5  # a sample a second, plus the first and the last
    times = [float(r["t_s"]) for r in rows]
    done_counts = [int(r["requests_done"]) for r in rows]
    assert times == sorted(times) and done_counts == sorted(done_counts) and done_counts[-1] >= 1
    assert all(float(r["rss_mib"]) > 0 for r in rows)

    data = json.loads(out_json.read_text())
    entry = data["memory"]["hearth"]
    assert entry["vm_hwm_mib"] >= max(float(r["rss_mib"]) for r in rows) - 1
    trend = entry["trend"]  # None when 8 s gave too few samples to fit; then no verdict
    if trend is None:
        assert entry["flat"] is None
    else:  # flat: the fitted growth is within --flat-tolerance (1 %) of the starting RSS
        assert entry["flat"] == (trend["growth_mib"] <= trend["base_mib"] * 0.01)
    assert data["settings"]["concurrency"] == [2] and data["settings"]["duration"] == 8
    assert data["cpu"]["model"] and data["cpu"]["flags"] == expected_cpu_flags()


def test_bench_runs_report_medians_of_raw_figures(server: Server, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    done = run_script(
        "scripts/bench.py", "--quick", "--runs", "2", "--url", server.url, "--json", str(out_json),
        "--long-prompt", "300",
    )  # fmt: skip
    assert "Medians of 2 run(s)" in done.stdout and "CPU: " in done.stdout
    assert "Long prompt: time to first token" in done.stdout

    data = json.loads(out_json.read_text())
    assert [r["run"] for r in data["runs"]] == [1, 2]
    levels: dict[int, list[dict[str, Any]]] = {}
    for run in data["runs"]:
        (hearth,) = run["servers"]
        assert hearth["label"] == "hearth"
        for level in hearth["levels"]:
            levels.setdefault(level["concurrency"], []).append(level)
            assert [r["tokens"] for r in level["requests"]] == [8, 8] and level["failed"] == 0
            assert level["rss_samples"] and level["rss_peak"] > 0
        long = hearth["long_prompt"]  # three different ~300-token prompts: prefill measured, not reused
        assert long["failed"] == 0 and len(long["requests"]) == 3
        assert all(250 < r["prompt_tokens"] < 400 and r["ttft"] > 0 for r in long["requests"])
        assert all(not r["cached_tokens"] for r in long["requests"])
    assert sorted(levels) == [1, 2]
    medians = {m["concurrency"]: m for m in data["medians"]["hearth"]}
    for conc, runs in levels.items():
        assert medians[conc]["tok_s"] == round(statistics.median(r["tok_s"] for r in runs), 3) > 0
        assert medians[conc]["tok_s_min"] <= medians[conc]["tok_s"] <= medians[conc]["tok_s_max"]


def test_bench_puts_several_catalogs_in_one_table(tmp_path: Path) -> None:
    """The bench starts one Hearth per catalog itself; each row is labelled with its catalog."""
    small = small_catalog(tmp_path / "small.yaml", max_batch_size=2, max_waiting=4)
    out_json = tmp_path / "bench.json"
    done = run_script(
        "scripts/bench.py", "--quick", "--concurrency", "1", "--hearth-python", sys.executable,
        "--hearth-config", str(ROOT / "models.yaml"), "--config", str(small), "--json", str(out_json),
    )  # fmt: skip
    labels = ["hearth (models.yaml)", "hearth (small.yaml)"]
    assert all(f"| {label} | 1 |" in done.stdout for label in labels)
    data = json.loads(out_json.read_text())
    assert [s["label"] for s in data["runs"][0]["servers"]] == labels
    assert list(data["medians"]) == labels


def test_bench_embeddings_quick_puts_hearth_beside_sentence_transformers(
    server: Server, tmp_path: Path
) -> None:
    out_json = tmp_path / "embed.json"
    done = run_script(
        "scripts/bench.py", "--embeddings", "--quick", "--url", server.url, "--json", str(out_json)
    )
    rows = json.loads(out_json.read_text())["rows"]
    hearth = [(r["batch"], r["concurrency"]) for r in rows if r["system"] == "hearth"]
    assert hearth == [(1, 1), (1, 2), (4, 1), (4, 2)]
    systems = {r["system"] for r in rows}
    assert systems == {"hearth", "sentence-transformers", "sentence-transformers (all at once)"}
    for r in rows:
        assert r["failed"] == 0 and r["sentences_s"] > 0 and r["wall"] > 0
    assert "| hearth | 4 | 2 |" in done.stdout
    assert json.loads(out_json.read_text())["hearth_over_llama_server"] == []  # no --llama-server


def test_bench_embeddings_peer_gguf_needs_llama_server(tmp_path: Path) -> None:
    """A GGUF for llama-server without the binary to run it is a usage error, before any server starts."""
    cmd = [sys.executable, "scripts/bench.py", "--embeddings", "--peer-gguf", str(tmp_path / "m.gguf")]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--peer-gguf is llama-server's model: give --llama-server PATH too" in done.stderr
    assert "starting" not in done.stdout


def test_bench_multiturn_quick_reports_prompt_tokens_per_turn(server: Server, tmp_path: Path) -> None:
    """Two users, two turns against the session's server: the second turn sends the first turn's
    conversation again, and the prefix cache computes less of it than was sent."""
    out_json = tmp_path / "multiturn.json"
    done = run_script(
        "scripts/bench.py", "--multiturn", "--quick", "--url", server.url, "--json", str(out_json)
    )
    header = "| turn | requests | failed | TTFT p50 s | TTFT p99 s | prompt tokens | computed |"
    assert header in done.stdout
    [turns] = json.loads(out_json.read_text())["servers"].values()
    assert [(t["turn"], t["requests"], t["failed"]) for t in turns] == [(1, 2, 0), (2, 2, 0)]
    first, second = turns
    assert second["prompt_tokens"] > first["prompt_tokens"]  # the history grows
    assert 0 < second["computed_tokens"] < second["prompt_tokens"] / 2  # most of it came from the cache
    assert all(t["ttft_p50"] > 0 for t in turns)
