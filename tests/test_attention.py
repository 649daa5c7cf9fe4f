"""engine.model.attention: a query row keeps its bits whatever shares the step.

Greedy output must not depend on the batch (tests/test_batching.py checks it end to end). Here
the attention alone, in float32 and bfloat16 (on a CPU with the kernels built, `hearth::attend`;
without them, gathers and SDPA's flash kernel or written-out products):
- a decoding row gives the same bits alone and beside other rows that pad the step to a longer
  key length;
- a token gives the same bits decoded or as the last token of a prefill chunk of any length
  (a prompt whose prefix is cached ends in a one-token step that runs as a decode row, and
  cached keys and values may come from either path).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.core.blocks import BLOCK_SIZE
from engine.core.kv_cache import PagedKVCache
from engine.model.attention import (
    GROUP_COST,
    KV_BLOCK,
    KV_SPLIT,
    DecodeGroup,
    PrefillChunk,
    StepMeta,
    decode_groups,
    kv_length,
    slot_attention,
)
from engine.model.kv_gather import gather

HQ, HKV, D, MAX_LEN, SLOTS = 9, 3, 64, 2048, 6
PER_SEQ = MAX_LEN // BLOCK_SIZE  # blocks of one sequence


class _Layer0:
    layer_idx = 0


def _table(seq: int) -> list[int]:
    """Sequence `seq`'s blocks: a run of PER_SEQ blocks, in reverse (tables need not be ordered)."""
    return list(range(1 + (seq + 1) * PER_SEQ - 1, seq * PER_SEQ, -1))


def _keys(cache: PagedKVCache, seq: int, start: int, end: int) -> torch.Tensor:
    """Sequence `seq`'s cached keys and values at positions [start, end): [2, end - start, Hkv, D]."""
    table = torch.tensor(_table(seq))[None]
    k, v = gather(cache.k[0], table)[0], gather(cache.v[0], table)[0]  # [Hkv, L, D]
    return torch.stack([k[:, start:end], v[:, start:end]]).transpose(1, 2)


def _decode(
    cache: PagedKVCache,
    rows: list[tuple[int, int]],
    q: torch.Tensor,
    kv: torch.Tensor,
    spans: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Attention output [n, Hq, D] for decode rows (sequence, position) with queries q [n, Hq, D]
    and new keys/values kv [2, n, Hkv, D]; `spans`: the rows' groups (start, count), default one."""
    pos = torch.tensor([p for _, p in rows])
    blocks = torch.tensor([_table(s)[p // BLOCK_SIZE] for s, p in rows])
    groups = []
    for start, count in spans or [(0, len(rows))]:
        mine = rows[start : start + count]
        kv_len = kv_length(max(p for _, p in mine) + 1)
        tables = torch.tensor([_table(s)[: kv_len // BLOCK_SIZE] for s, _ in mine])
        groups.append(DecodeGroup(start, count, tables, pos[start : start + count] + 1, kv_len))
    step = StepMeta(cache, blocks, pos % BLOCK_SIZE, pos, len(rows), groups, prefills=[])
    query = q.transpose(0, 1)[None]  # [1, Hq, n, D]
    key, value = (t.transpose(0, 1)[None] for t in kv)  # [1, Hkv, n, D]
    out, _ = slot_attention(_Layer0(), query, key, value, None, hearth_step=step)  # type: ignore[arg-type]
    return out[0]


def _prefill(cache: PagedKVCache, seq: int, start: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Attention output [c, Hq, D] of a prefill chunk of sequence `seq` from `start` (q [c, Hq, D])."""
    c = q.shape[0]
    pos = torch.arange(start, start + c)
    table = _table(seq)
    chunk = PrefillChunk(0, c, torch.tensor(table[: kv_length(start + c) // BLOCK_SIZE]), start)
    blocks = torch.tensor([table[p // BLOCK_SIZE] for p in pos.tolist()])
    step = StepMeta(cache, blocks, pos % BLOCK_SIZE, pos, 0, [], prefills=[chunk])
    query = q.transpose(0, 1)[None]
    key, value = (t.transpose(0, 1)[None] for t in kv)
    out, _ = slot_attention(_Layer0(), query, key, value, None, hearth_step=step)  # type: ignore[arg-type]
    return out[0]


def _random_cache(dtype: torch.dtype) -> PagedKVCache:
    cache = PagedKVCache(1, 1 + SLOTS * PER_SEQ, HKV, D, dtype, torch.device("cpu"))
    cache.k.normal_()
    cache.v.normal_()
    return cache


def test_gather_reads_a_block_table_in_order() -> None:
    cache = PagedKVCache(1, 5, 2, 4, torch.float32, torch.device("cpu"))
    cache.k.copy_(torch.arange(cache.k.numel(), dtype=torch.float32).view(cache.k.shape))
    out = gather(cache.k[0], torch.tensor([[3, 1], [0, 4]]))  # [2 rows, 2 heads, 2 blocks' positions, 4]
    assert out.shape == (2, 2, 2 * BLOCK_SIZE, 4)
    assert torch.equal(out[0, 1, :BLOCK_SIZE], cache.k[0, 1, 3])
    assert torch.equal(out[0, 1, BLOCK_SIZE:], cache.k[0, 1, 1])
    assert torch.equal(out[1, 0, BLOCK_SIZE:], cache.k[0, 0, 4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_token_gets_the_same_bits_decoded_or_prefilled(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    cache = _random_cache(dtype)
    seq = 3
    for p in (9, 100, 600):  # the token's position; 600: more than one of the flash kernel's key blocks
        q, kv = torch.randn(1, HQ, D, dtype=dtype), torch.randn(2, 1, HKV, D, dtype=dtype)
        decoded = _decode(cache, [(seq, p)], q, kv)[0]
        for c in (1, 2, 7, p + 1):  # the last: the whole prompt in one chunk
            start = p - c + 1
            earlier = _keys(cache, seq, start, p)
            chunk_kv = torch.cat([earlier, kv], dim=1)  # the cached keys/values, then the token's own
            chunk_q = torch.cat([torch.randn(c - 1, HQ, D, dtype=dtype), q])
            prefilled = _prefill(cache, seq, start, chunk_q, chunk_kv)[-1]
            assert torch.equal(prefilled, decoded), f"{dtype}: position {p}, chunk of {c}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("position", [100, 853])  # key lengths alone: 128; 1024 (two key blocks)
def test_a_decode_row_keeps_its_bits_beside_other_rows(dtype: torch.dtype, position: int) -> None:
    torch.manual_seed(0)
    cache = _random_cache(dtype)
    q = torch.randn(4, HQ, D, dtype=dtype)
    kv = torch.randn(2, 4, HKV, D, dtype=dtype)
    mine = (2, position)
    alone = _decode(cache, [mine], q[:1], kv[:, :1])
    for others in ([(1, 700)], [(4, 30), (5, 333)], [(1, 1000), (3, 64), (5, 5)], [(1, 1900), (4, 1100)]):
        rows = [*others[:1], mine, *others[1:]]  # not first: its row index changes too
        n = len(rows)
        order = [1, 0, *range(2, n)]  # q/kv rows in `rows` order, with mine's data at index 1
        out = _decode(cache, rows, q[:n][order], kv[:, :n][:, order])
        assert torch.equal(out[1], alone[0]), f"{dtype} beside {others}"
        for split in range(1, n):  # the rows in two groups, each padded to its own longest row
            grouped = _decode(
                cache, rows, q[:n][order], kv[:, :n][:, order], [(0, split), (split, n - split)]
            )
            assert torch.equal(grouped, out), f"{dtype} beside {others}, groups split at {split}"


def test_rows_past_one_key_block_are_padded_by_whole_key_blocks() -> None:
    """bfloat16 SDPA (flash) sums keys in blocks of KV_SPLIT: padding a row's last, partly masked
    block to another length moved its bits (peaked softmaxes, seen at 854 keys: 896 vs 1024), whole
    masked blocks do not. So `kv_length` pads past KV_SPLIT by whole blocks, and any longer length a
    step pads a row to (its group's, a recorded bucket's) leaves the row as it is. (SDPA is the
    fallback where Hearth's `attend` op is not built; that op reads only a row's own keys.)"""
    g = torch.Generator().manual_seed(0)
    rows = 16
    q = (torch.randn(rows, HKV, 4, D, generator=g) * 4).to(torch.bfloat16)  # peaked, as trained models' are
    k, v = (torch.randn(rows, HKV, 2048, D, generator=g).to(torch.bfloat16) for _ in range(2))

    def out(sees: int, length: int) -> torch.Tensor:
        bias = torch.zeros(rows, 1, 1, length, dtype=torch.bfloat16)
        bias[..., sees:] = float("-inf")
        keys, values = k[:, :, :length], v[:, :, :length]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=D**-0.5)

    for sees in (600, 854, 1000, 1300):
        own = kv_length(sees)
        assert own % KV_SPLIT == 0
        for longer in range(own + KV_SPLIT, 2048 + 1, KV_SPLIT):
            assert torch.equal(out(sees, longer), out(sees, own)), f"{sees} keys padded to {longer}"


def test_decode_groups_split_rows_only_where_the_padding_saved_outweighs_a_group() -> None:
    assert decode_groups([]) == []
    assert decode_groups([256] * 8) == [(0, 8, 256)]
    # 16 long rows and 16 short ones: a group of the short rows saves 16 x 192 key positions
    assert decode_groups([320] * 16 + [128] * 16) == [(0, 16, 320), (16, 16, 128)]
    # one row 64 positions longer than seven others: padding those costs less than a group
    assert 7 * KV_BLOCK < GROUP_COST
    assert decode_groups([192] + [128] * 7) == [(0, 8, 192)]
    # every split is consecutive, longest first, and covers every row once
    lens = [1024, 960, 960, 512, 448, 448, 448, 128, 64, 64]
    groups = decode_groups(lens)
    assert [s for s, _, _ in groups] == [0, *[s + c for s, c, _ in groups[:-1]]]
    assert sum(c for _, c, _ in groups) == len(lens)
    assert all(kv == lens[s] for s, _, kv in groups)


def test_bfloat16_decode_matches_the_float32_products() -> None:
    torch.manual_seed(1)
    cache = _random_cache(torch.float32)
    q, kv = torch.randn(3, HQ, D), torch.randn(2, 3, HKV, D)
    rows = [(1, 40), (3, 500), (4, 129)]
    want = _decode(cache, rows, q, kv)
    half = PagedKVCache(1, 1 + SLOTS * PER_SEQ, HKV, D, torch.bfloat16, torch.device("cpu"))
    half.k.copy_(cache.k)
    half.v.copy_(cache.v)
    got = _decode(half, rows, q.bfloat16(), kv.bfloat16())
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
