"""scripts/bandwidth.py on the embedded model: every figure printed, in bfloat16 and float32 plain
weights and the default GGUF int4 blocks, and figures that add up. Structure only: nothing is timed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.launch import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
FIELDS = [
    "threads", "bandwidth_gb_s", "weight_mb", "limit_ms", "limit_tok_s", "step_ms", "step_tok_s",
    "step_cpu_ms", "of_limit_pct", "products_ms", "attention_ms", "rest_ms", "aten_calls_per_step",
]  # fmt: skip


def bandwidth(*args: str) -> dict[str, str]:
    cmd = [
        sys.executable,
        "scripts/bandwidth.py",
        "--steps",
        "4",
        "--context",
        "16",
        "--buffer-mib",
        "64",
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line]
    return {key: value for key, value in lines}


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["--quantization", "none", "--dtype", "bfloat16"], "(none, torch.bfloat16)"),
        (["--quantization", "none", "--dtype", "float32", "--traces", "off"], "(none, torch.float32)"),
        ([], "(gguf:"),
    ],
)
def test_prints_the_limit_beside_the_measured_step(args: list[str], what: str) -> None:
    out = bandwidth("--threads", "1", *args)
    assert out["model"].startswith(f"smollm2-135m-instruct {what}")
    assert list(out)[1:] == FIELDS
    figures = {key: float(out[key]) for key in FIELDS}
    assert figures["threads"] == 1
    assert all(
        figures[key] > 0 for key in ("bandwidth_gb_s", "limit_ms", "step_ms", "step_cpu_ms", "products_ms")
    )
    weights = {"(none, torch.bfloat16)": 269, "(none, torch.float32)": 538}.get(what)
    if weights is not None:  # SmolLM2-135M's weights, the tied embedding read once (as the lm_head)
        assert abs(figures["weight_mb"] - weights) < 5
    else:  # 4-bit blocks and their scales: well under the bfloat16 weights
        assert 50 < figures["weight_mb"] < 200
    assert figures["limit_ms"] == pytest.approx(
        1e3 * figures["weight_mb"] / 1e3 / figures["bandwidth_gb_s"], rel=0.02
    )
    parts = figures["products_ms"] + figures["attention_ms"] + figures["rest_ms"]
    assert parts == pytest.approx(figures["step_ms"], abs=0.2) or figures["rest_ms"] == 0
