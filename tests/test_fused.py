"""engine.model.lean.fused: the fused CPU kernels build here, round as transformers does (RMSNorm up
to the last bit of a few elements, the rotary embedding bit for bit), a row's result does not
depend on the rows beside it, and the lean forward runs them on bfloat16 and float32 models."""

from __future__ import annotations

import math

import torch

from engine.model.lean import fused
from engine.model.lean.forward import Norm, _rotate


class _Module:
    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


def _rows(n: int, width: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, width, generator=g) * 3).to(dtype)


def test_the_kernels_build_on_this_machine() -> None:
    assert fused.available(), "torch.ops.hearth did not build: see the log (a C++ compiler is needed)"
    assert fused.usable(torch.zeros(1, dtype=torch.bfloat16)) and fused.usable(torch.zeros(1))
    assert not fused.usable(torch.zeros(1, dtype=torch.float16))  # aten's ops there


def test_rms_norm_rounds_as_transformers_does() -> None:
    """Llama's norm rounds twice (`weight * hidden.to(bfloat16)`), Gemma's once (in float32, `1 + w`):
    the kernel rounds where transformers' modules do; only a row's sum of squares is added up in
    another order, which can move an element by its last bit."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = _rows(37, 576)
    for gemma, module in ((False, LlamaRMSNorm(576, eps=1e-5)), (True, Gemma3RMSNorm(576, eps=1e-5))):
        with torch.no_grad():
            module.weight.copy_(torch.randn(576) * 0.1)
        module = module.to(torch.bfloat16)
        with torch.no_grad():
            want = module(x)
        mine = Norm(module, 1e-5, gemma, fuse=True)(x)
        assert mine.dtype == want.dtype == torch.bfloat16 and mine.shape == want.shape
        ulp = (want.float().abs() * 2**-7).clamp(min=1e-30)  # a bfloat16 ulp (8 bits of mantissa)
        assert ((mine.float() - want.float()).abs() <= ulp).all()
        assert (mine != want).float().mean() < 0.005, gemma


def test_a_rows_norm_does_not_depend_on_the_rows_beside_it() -> None:
    x = _rows(64, 960, seed=1)
    weight = torch.randn(960).to(torch.bfloat16)
    norm = Norm(_Module(weight), 1e-6, False, fuse=True)
    together = norm(x)
    alone = torch.cat([norm(x[i : i + 1]) for i in range(64)])
    assert torch.equal(together, alone)
    strided = torch.cat([x, x], dim=1)[:, :960]  # rows of a wider tensor (a slice of q/k/v, say)
    assert torch.equal(norm(strided), together)


def test_rope_is_atens_bit_for_bit_with_full_and_partial_rotation() -> None:
    t, heads, kv_heads, d = 7, 9, 3, 64
    qkv = _rows(t, (heads + 2 * kv_heads) * d, seed=2)
    for rotated in (d, d // 2):  # Phi-4-mini rotates part of each head
        angles = torch.randn(t, rotated // 2)
        cos = torch.cat([angles.cos()] * 2, dim=-1).to(torch.bfloat16)
        sin = torch.cat([angles.sin()] * 2, dim=-1).to(torch.bfloat16)
        qk = qkv[:, : (heads + kv_heads) * d].view(t, heads + kv_heads, d)
        aten = _rotate(qk, cos[:, None, :], sin[:, None, :])
        mine = torch.ops.hearth.rope(qkv, heads + kv_heads, d, cos, sin)
        assert mine.shape == aten.shape and torch.equal(mine, aten)


def test_act_mul_is_the_activation_times_up() -> None:
    """A quantized model's gated MLP: gate and up as one product's halves, SiLU or GELU (tanh),
    rounded where `act(gate) * up` rounds in bfloat16; checked against the activation in float64."""
    import torch.nn.functional as F

    inner = 1543  # 96 lanes of 16 and 7 left: the vector and the scalar forms
    gu = _rows(33, 2 * inner, seed=3)
    gate, up = gu[:, :inner], gu[:, inner:]
    for silu in (True, False):
        v = gate.double()
        # GELU (tanh) as 0.5 v (1 + tanh(y)) = v / (1 + e^-2y): float64's 1 + tanh cancels for v < -6
        y = (2 / math.pi) ** 0.5 * (v + 0.044715 * v**3)
        exact = F.silu(v) if silu else v / (1 + torch.exp(-2 * y))
        want = (exact.to(torch.bfloat16).double() * up.double()).to(torch.bfloat16)
        mine = torch.ops.hearth.act_mul(gu, silu)
        assert mine.shape == want.shape
        # exp's last bits move the activation's rounding now and then: two roundings, one ulp each
        two_ulps = (want.float().abs() * 2**-6).clamp(min=1e-30)
        assert ((mine.float() - want.float()).abs() <= two_ulps).all()
        assert (mine != want).float().mean() < 0.01
        # torch's own bfloat16 GELU loses the small values of large negative v to that cancellation
        # (~6 % of these rows differ from the exact ones); the kernel computes v / (1 + e^-2y)
        if silu:
            assert (mine != F.silu(gate) * up).float().mean() < 0.01


def test_float32_norm_and_rope_are_atens_and_act_mul_is_within_an_ulp() -> None:
    """On float32 rows (plain float32 weights) the norm and the rotary embedding are aten's within
    an ulp (aten's `addcmul` may fuse a multiply-add), and the activation times up is within a
    few float32 ulps of float64's."""
    import torch.nn.functional as F

    assert fused.available()
    x = _rows(37, 576, dtype=torch.float32)
    weight = torch.randn(576)
    mine = Norm(_Module(weight), 1e-5, False, fuse=True)(x)
    want = torch.rms_norm(x, (576,), weight, 1e-5)
    assert mine.dtype == torch.float32 and torch.allclose(mine, want, rtol=1e-6, atol=0)
    t, heads, d = 5, 12, 64
    qkv = _rows(t, (heads + 3) * d, seed=5, dtype=torch.float32)
    angles = torch.randn(t, d // 2)
    cos, sin = torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)
    aten = _rotate(qkv[:, : heads * d].view(t, heads, d), cos[:, None, :], sin[:, None, :])
    torch.testing.assert_close(torch.ops.hearth.rope(qkv, heads, d, cos, sin), aten, rtol=2**-22, atol=1e-6)
    gu = _rows(9, 2 * 1543, seed=6, dtype=torch.float32)
    gate, up = gu[:, :1543].double(), gu[:, 1543:].double()
    for silu in (True, False):
        exact = F.silu(gate) if silu else F.gelu(gate, approximate="tanh")
        mine = torch.ops.hearth.act_mul(gu, silu)
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine.double(), exact * up, rtol=2**-19, atol=1e-6)
    together = torch.ops.hearth.act_mul(gu, True)
    assert torch.equal(torch.cat([torch.ops.hearth.act_mul(gu[i : i + 1], True) for i in range(9)]), together)


def test_argmax_rows_is_torchs_argmax_and_flags_non_finite_rows() -> None:
    """The engine's greedy pick and finite check in one pass: torch.argmax's index (the first of
    tied maxima), and False for a row holding NaN or an infinity, for vocabularies of any width."""
    g = torch.Generator().manual_seed(4)
    for rows, vocab in ((1, 7), (3, 16), (5, 49152), (2, 1000003)):
        x = torch.randn(rows, vocab, generator=g)
        x[0, vocab // 2] = x[0, -1] = x[0].max() + 1  # a tie: the first one wins
        ids, finite = torch.ops.hearth.argmax_rows(x)
        assert torch.equal(ids, torch.argmax(x, dim=-1)) and bool(finite.all())
        for bad in (float("nan"), float("inf"), float("-inf")):
            y = x.clone()
            y[-1, vocab - 2] = bad
            assert torch.ops.hearth.argmax_rows(y)[1].tolist() == [True] * (rows - 1) + [False]


def _attention64(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v in float64; a row that sees no key gives zeros."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale + bias.double()
    return (torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v.double()).float()


def test_attend_is_attention_and_a_rows_bits_are_its_own() -> None:
    """float32 attention in one op (`lean/attend.cpp`): within float32 rounding of float64's, for the
    shapes the engine calls it with (a prefill chunk [Hkv, rows, D] with a causal mask; decode rows
    [R, Hkv, 4, D] with a mask per row; head dims 64 to 256; an odd row count); a row that sees no
    key gives zeros; and a query row's bits are the same alone or in a chunk, whatever masked keys
    pad it, even where those keys hold NaN (a block's stale contents); read in place through block
    tables, the same bits as from gathered copies."""
    assert fused.f32_dot(), "attend needs the AVX-512 build"
    g = torch.Generator().manual_seed(3)
    inf = float("-inf")
    for d, rows in ((64, 260), (256, 36), (128, 13)):
        q, k, v = (torch.randn(3, n, d, generator=g) for n in (rows, 320, 320))
        pos = 200 + torch.arange(rows) // 3  # 3 query heads a key head, as SmolLM2's
        bias = torch.zeros(rows, 320).masked_fill_(torch.arange(320)[None, :] > pos[:, None], inf)
        bias[rows - 1] = inf  # a padding row
        chunk = torch.ops.hearth.attend(q, k, v, None, bias, 0.125)
        torch.testing.assert_close(chunk, _attention64(q, k, v, bias, 0.125), rtol=1e-5, atol=2e-6)
        assert not chunk[:, rows - 1].any()
        # the same rows decoded one at a time, over keys padded by a masked block of NaNs
        pad = torch.full((3, 64, d), float("nan"))
        kp, vp = torch.cat([k, pad], 1)[None], torch.cat([v, pad], 1)[None]
        for i in (0, 1, rows // 2, rows - 2):
            qd = torch.zeros(1, 3, 4, d)
            qd[0, :, 0] = q[:, i]
            bd = torch.cat([bias[i], torch.full((64,), inf)]).view(1, 1, 1, -1)
            alone = torch.ops.hearth.attend(qd, kp, vp, None, bd, 0.125)
            assert torch.equal(alone[0, :, 0], chunk[:, i]), (d, i)
    # read in place through block tables ([Hkv, blocks, 16, D] caches): the same bits as gathered
    kc, vc = (torch.randn(3, 40, 16, 64, generator=g) for _ in range(2))
    tables = torch.tensor([[7, 3, 39, 0, 12, 5, 6, 8], [1, 2, 4, 9, 0, 0, 0, 0]])
    q = torch.randn(2, 3, 4, 64, generator=g)
    bias = torch.zeros(2, 1, 1, 128)
    bias[1, ..., 70:] = inf
    gathered = [c[:, tables].reshape(3, 2, 128, 64).transpose(0, 1).contiguous() for c in (kc, vc)]
    assert torch.equal(
        torch.ops.hearth.attend(q, kc, vc, tables, bias, 0.2),
        torch.ops.hearth.attend(q, *gathered, None, bias, 0.2),
    )
    # a sliding window: each row sees only its own span of keys
    q, k, v = (torch.randn(2, n, 64, generator=g) for n in (8, 128, 128))
    bias = torch.full((8, 128), inf)
    for r in range(8):
        bias[r, 10 + r : 50 + 3 * r] = 0.0
    torch.testing.assert_close(
        torch.ops.hearth.attend(q, k, v, None, bias, 0.3),
        _attention64(q, k, v, bias, 0.3),
        rtol=1e-5,
        atol=2e-6,
    )
