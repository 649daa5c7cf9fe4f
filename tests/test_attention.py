"""engine.model.attention: a query row keeps its bits whatever shares the step.

Greedy output must not depend on the batch (tests/test_batching.py checks it end to end). Here
the attention alone, in float32 (written-out products) and in bfloat16 (SDPA's flash kernel):
- a decoding row gives the same bits alone and beside other rows that pad the step to a longer
  key length;
- a token gives the same bits decoded or as the last token of a prefill chunk of any length
  (a prompt whose prefix is cached ends in a one-token step that runs as a decode row, and
  cached keys and values may come from either path).
"""

from __future__ import annotations

import pytest
import torch

from engine.core.kv_cache import SlotKVCache
from engine.model.attention import KV_BLOCK, PrefillChunk, StepMeta, round_up, slot_attention

HQ, HKV, D, MAX_LEN, SLOTS = 9, 3, 64, 1024, 6


class _Layer0:
    layer_idx = 0


def _decode(
    cache: SlotKVCache, rows: list[tuple[int, int]], q: torch.Tensor, kv: torch.Tensor
) -> torch.Tensor:
    """Attention output [n, Hq, D] for decode rows (slot, position) with queries q [n, Hq, D] and
    new keys/values kv [2, n, Hkv, D], in the slot-row layout the eager runner uses."""
    slots = torch.tensor([s for s, _ in rows])
    pos = torch.tensor([p for _, p in rows])
    lens = torch.zeros(max(s for s, _ in rows) + 1, dtype=torch.long)
    lens[slots] = pos + 1
    kv_len = round_up(int(lens.max()), KV_BLOCK)
    step = StepMeta(cache, slots, pos, len(rows), slots, lens, len(lens), kv_len, prefills=[])
    query = q.transpose(0, 1)[None]  # [1, Hq, n, D]
    key, value = (t.transpose(0, 1)[None] for t in kv)  # [1, Hkv, n, D]
    out, _ = slot_attention(_Layer0(), query, key, value, None, hearth_step=step)  # type: ignore[arg-type]
    return out[0]


def _prefill(cache: SlotKVCache, slot: int, start: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Attention output [c, Hq, D] of a prefill chunk of slot `slot` at positions start.. (q [c, Hq, D])."""
    c = q.shape[0]
    slots, pos = torch.full((c,), slot), torch.arange(start, start + c)
    chunk = PrefillChunk(token_start=0, count=c, slot=slot, start_pos=start)
    none = torch.zeros(0, dtype=torch.long)
    step = StepMeta(cache, slots, pos, 0, none, none, 0, 0, prefills=[chunk])
    query = q.transpose(0, 1)[None]
    key, value = (t.transpose(0, 1)[None] for t in kv)
    out, _ = slot_attention(_Layer0(), query, key, value, None, hearth_step=step)  # type: ignore[arg-type]
    return out[0]


def _random_cache(dtype: torch.dtype) -> SlotKVCache:
    cache = SlotKVCache(1, SLOTS, HKV, MAX_LEN, D, dtype, torch.device("cpu"))
    cache.ensure_clean(range(SLOTS), MAX_LEN)
    cache.k.normal_()
    cache.v.normal_()
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_token_gets_the_same_bits_decoded_or_prefilled(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    cache = _random_cache(dtype)
    slot = 3
    for p in (9, 100, 600):  # the token's position; 600: more than one of the flash kernel's key blocks
        q, kv = torch.randn(1, HQ, D, dtype=dtype), torch.randn(2, 1, HKV, D, dtype=dtype)
        decoded = _decode(cache, [(slot, p)], q, kv)[0]
        for c in (1, 2, 7, p + 1):  # the last: the whole prompt in one chunk
            start = p - c + 1
            earlier = torch.stack([cache.k[0, slot, :, start:p], cache.v[0, slot, :, start:p]]).transpose(
                1, 2
            )
            chunk_kv = torch.cat([earlier, kv], dim=1)  # the cached keys/values, then the token's own
            chunk_q = torch.cat([torch.randn(c - 1, HQ, D, dtype=dtype), q])
            prefilled = _prefill(cache, slot, start, chunk_q, chunk_kv)[-1]
            assert torch.equal(prefilled, decoded), f"{dtype}: position {p}, chunk of {c}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decode_row_keeps_its_bits_beside_other_rows(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cache = _random_cache(dtype)
    q = torch.randn(4, HQ, D, dtype=dtype)
    kv = torch.randn(2, 4, HKV, D, dtype=dtype)
    mine = (2, 100)  # slot 2 at position 100: a key length of 128 alone
    alone = _decode(cache, [mine], q[:1], kv[:, :1])
    for others in ([(1, 700)], [(4, 30), (5, 333)], [(1, 1000), (3, 64), (5, 5)]):
        rows = [*others[:1], mine, *others[1:]]  # not first: its row index changes too
        n = len(rows)
        order = [1, 0, *range(2, n)]  # q/kv rows in `rows` order, with mine's data at index 1
        out = _decode(cache, rows, q[:n][order], kv[:, :n][:, order])
        assert torch.equal(out[1], alone[0]), f"{dtype} beside {others}"


def test_bfloat16_decode_matches_the_float32_products() -> None:
    torch.manual_seed(1)
    cache = _random_cache(torch.float32)
    q, kv = torch.randn(3, HQ, D), torch.randn(2, 3, HKV, D)
    rows = [(1, 40), (3, 500), (4, 129)]
    want = _decode(cache, rows, q, kv)
    half = SlotKVCache(1, SLOTS, HKV, MAX_LEN, D, torch.bfloat16, torch.device("cpu"))
    half.ensure_clean(range(SLOTS), MAX_LEN)
    half.k.copy_(cache.k)
    half.v.copy_(cache.v)
    got = _decode(half, rows, q.bfloat16(), kv.bfloat16())
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
