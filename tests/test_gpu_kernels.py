"""engine.model.lean.gpu_kernels under Triton's interpreter, on CPU tensors: each kernel gives the torch
ops' result (to rounding), and the lean forward on them gives each family's transformers greedy
tokens. tests/test_gpu.py runs the same forward compiled for a real GPU (batch invariance there)."""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from engine.model.attention import attend
from engine.model.kv_gather import gather
from engine.model.lean import LeanLlama, gpu_kernels
from engine.model.lean.forward import FusedDense, _rotate
from tests.families import PROMPTS, build, engine_over, reference
from tests.greedy import describe_divergence, engine_generate

N_TOKENS = 4
# what the kernels see apart: plain (Llama 3), sliding windows and two rotary embeddings (Gemma 3),
# partial rotary and a fused gate_up (Phi-3); the q/k norms (Qwen3) have their kernel test. Two
# prompts, the short one and the one past the window: the interpreter is slow
FAMILIES = ["llama3", "gemma3", "phi3"]
KERNEL_PROMPTS = PROMPTS[:2]


@pytest.fixture(scope="module", autouse=True)
def interpreted() -> Iterator[None]:
    """The kernels on CPU tensors for this module's tests only (tests/conftest.py sets Triton's
    interpreter up where no GPU is)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a GPU is here: tests/test_gpu.py runs the kernels compiled")
    with pytest.MonkeyPatch.context() as patch:
        # scripts/_setup.sh installs Triton beside .venv, not in it (torch would load it everywhere)
        patch.syspath_prepend(str(Path(sys.prefix) / "triton-interpreter"))
        patch.setenv("HEARTH_GPU_KERNELS", "interpret")
        assert gpu_kernels.usable(torch.zeros(1))
        yield


@pytest.mark.parametrize("normed", [False, True], ids=["", "qk_norm"])
@pytest.mark.parametrize("rotary", [32, 24], ids=["full", "partial"])
def test_rope_write_rotates_in_place_and_writes_the_cache(rotary: int, normed: bool) -> None:
    torch.manual_seed(0)
    t, hq, hkv, d, blocks = 5, 4, 2, 32, 6
    qkv = torch.randn(t, (hq + 2 * hkv) * d)
    qk = qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d)  # strided rows, as the forward's
    v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
    cos, sin = torch.randn(t, 1, rotary), torch.randn(t, 1, rotary)
    norm = (torch.rand(hq + hkv, d) + 0.5, 1e-6) if normed else None  # per-head weights, as Qwen3's
    heads = qk if norm is None else torch.rms_norm(qk, (d,), None, norm[1]) * norm[0]
    want = _rotate(heads.clone(), cos, sin)
    kc, vc = torch.zeros(hkv, blocks, 16, d), torch.zeros(hkv, blocks, 16, d)
    where, at = torch.tensor([1, 1, 3, 5, 0]), torch.tensor([0, 15, 2, 7, 9])

    gpu_kernels.rope_write(qk, v, cos[:, 0], sin[:, 0], kc, vc, where, at, norm)

    torch.testing.assert_close(qk, want, atol=1e-6, rtol=1e-6)  # to rounding (a fused multiply-add)
    assert torch.equal(kc[:, where, at], qk[:, hq:].transpose(0, 1))
    assert torch.equal(vc[:, where, at], v.transpose(0, 1))
    untouched = torch.ones(blocks, 16, dtype=torch.bool)
    untouched[where, at] = False
    assert not kc[:, untouched].any() and not vc[:, untouched].any()


@pytest.mark.parametrize("window", [None, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_reads_the_cache_in_place_as_gathered_attention(
    window: int | None, dtype: torch.dtype
) -> None:
    torch.manual_seed(1)
    hq, hkv, d = 6, 2, 24  # a head size that is no power of two (Phi-3's 96, scaled down)
    kc, vc = torch.randn(hkv, 10, 16, d, dtype=dtype), torch.randn(hkv, 10, 16, d, dtype=dtype)
    tables = torch.tensor([[3, 1, 4, 0, 0, 0], [2, 7, 8, 9, 5, 6], [0, 0, 0, 0, 0, 0]])
    lens = torch.tensor([40, 96, 1])
    q = torch.randn(3, hq, d, dtype=dtype)
    out = torch.full((3, hq, d), float("nan"), dtype=dtype)

    gpu_kernels.paged_decode(q, kc, vc, tables, lens, out, 0.3, window)

    k, v = gather(kc, tables).float(), gather(vc, tables).float()  # [R, Hkv, L, D]
    for r, n in enumerate(lens.tolist()):
        j = torch.arange(k.shape[2])
        ok = (j < n) & (j >= (n - window if window else 0))
        bias = torch.zeros(ok.shape).masked_fill_(~ok, float("-inf"))
        qr = q[r].float().view(hkv, hq // hkv, d)
        want = attend(qr, k[r], v[r], bias, 0.3).reshape(hq, d)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out[r].float(), want, atol=tol, rtol=tol)


def test_paged_decode_splits_long_rows_and_a_rows_bits_do_not_depend_on_the_padded_length() -> None:
    """Past SPLIT keys a row's keys are summed by several programs and added up in split order: the
    result is attention over all of them, and a row gives the same bits whatever key length its
    step pads the tables to (one split or several: the splits past its keys add exact zeros)."""
    torch.manual_seed(2)
    hq, hkv, d, blocks = 4, 2, 32, 130
    kc, vc = torch.randn(hkv, blocks, 16, d), torch.randn(hkv, blocks, 16, d)
    order = torch.randperm(blocks - 1) + 1
    lens = torch.tensor([300, 1000])  # one split at the narrowest padding, two
    q = torch.randn(2, hq, d)

    def run(width: int, window: int | None = None) -> torch.Tensor:
        out = torch.empty(2, hq, d)
        tables = torch.zeros(2, width, dtype=torch.long)  # each row's blocks, then the scratch block
        tables[0, :64], tables[1, :64] = order[:64], order[64:128]
        gpu_kernels.paged_decode(q, kc, vc, tables, lens, out, 0.2, window)
        return out

    for window in (None, 700):
        narrow, wide = run(64, window), run(128 if window is None else 96, window)  # 2 splits; 4 or 3
        assert torch.equal(narrow, wide)
        k, v = gather(kc, order[None, 64:128]).float()[0], gather(vc, order[None, 64:128]).float()[0]
        j = torch.arange(1024)
        ok = (j < 1000) & (j >= (1000 - window if window else 0))
        bias = torch.zeros(1024).masked_fill_(~ok, float("-inf"))
        want = attend(q[1].view(hkv, hq // hkv, d), k, v, bias, 0.2).reshape(hq, d)
        torch.testing.assert_close(narrow[1], want, atol=1e-5, rtol=1e-5)
    one_split = torch.empty(1, hq, d)
    gpu_kernels.paged_decode(q[:1], kc, vc, order[None, :32], lens[:1], one_split, 0.2, None)
    assert torch.equal(one_split[0], run(64)[0])


@pytest.mark.parametrize("silu", [True, False], ids=["silu", "gelu_tanh"])
def test_act_mul_is_the_activation_of_gate_times_up(silu: bool) -> None:
    x = torch.randn(3, 2 * 1500)  # more than one program's block per row
    gate, up = x[:, :1500], x[:, 1500:]
    want = (F.silu(gate) if silu else F.gelu(gate, approximate="tanh")) * up
    torch.testing.assert_close(gpu_kernels.act_mul(x, silu), want, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_on_the_kernels_gives_transformers_greedy_tokens(name: str, tokenizer: Any) -> None:
    model = build(name)
    want = reference(model, KERNEL_PROMPTS, N_TOKENS)
    with engine_over(model, tokenizer) as engine:
        lean = engine.runner.lean
        assert isinstance(lean, LeanLlama) and lean.gpu and engine.runner.graphs is None
        assert all(isinstance(layer.mlp, FusedDense) for layer in lean.layers)
        got = [tokens for tokens, _ in engine_generate(engine, KERNEL_PROMPTS, [N_TOKENS] * 2)]
    assert got == want, describe_divergence(f"{name} on the GPU kernels vs transformers", got, want)


def test_a_kernel_that_computes_something_else_fails_the_check_and_the_forward_runs_torch_ops(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = build("llama3")
    gpu_kernels.self_check.cache_clear()
    assert LeanLlama(copy.deepcopy(model)).gpu
    monkeypatch.setattr(gpu_kernels, "act_mul", lambda x, silu: x[:, : x.shape[1] // 2] * 0)
    gpu_kernels.self_check.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hearth.engine"):
        lean = LeanLlama(copy.deepcopy(model))
    gpu_kernels.self_check.cache_clear()
    # no layer on the GPU kernels: the CPU's own ops (aten's, or Hearth's fused CPU kernels)
    assert not lean.gpu and not any(getattr(layer.mlp, "gpu", False) for layer in lean.layers)
    assert "GPU kernels failed their check" in caplog.text
