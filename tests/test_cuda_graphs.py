"""engine.cuda_graphs and the gathered decode attention it relies on, checked on the CPU.

On a CPU the bucketed decode path runs eagerly (`ModelRunner(graphs=True)`): same static
buffers, buckets, padding rows and gathered attention as the captured graphs, without the
capture. tests/test_gpu.py runs the real capture on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.attention import StepMeta, slot_attention
from engine.cuda_graphs import batch_buckets, kv_buckets
from engine.kv_cache import SlotKVCache
from tests.greedy import describe_divergence, engine_generate, prompts, running_engine

N_TOKENS = 24


def test_batch_buckets_cover_every_count_up_to_the_slots() -> None:
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(1) == [1]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]


def test_kv_buckets_double_up_to_the_cache_length() -> None:
    assert kv_buckets(1024) == [256, 512, 1024]
    assert kv_buckets(4160) == [256, 512, 1024, 2048, 4096, 4160]
    assert kv_buckets(64) == [64]


class _Layer0:
    layer_idx = 0


def test_gathered_decode_attention_equals_the_eager_layout() -> None:
    """The graph layout (each row's slot copied out) attends exactly like the slot-row layout."""
    torch.manual_seed(0)
    hq, hkv, d, length = 4, 2, 16, 128
    cache = SlotKVCache(1, 6, hkv, length, d, torch.float32, torch.device("cpu"))
    cache.ensure_clean(range(6), length)
    cache.k.normal_()
    cache.v.normal_()
    slots, pos = [4, 1, 3], [70, 5, 127]
    q = torch.randn(1, hq, len(slots), d)
    k, v = torch.randn(2, 1, hkv, len(slots), d)
    slots_t, pos_t = torch.tensor(slots), torch.tensor(pos)

    def run(step: StepMeta) -> torch.Tensor:  # both write the same keys and values, then attend
        out, _ = slot_attention(_Layer0(), q, k, v, None, hearth_step=step)  # type: ignore[arg-type]
        return out

    lens = torch.zeros(6, dtype=torch.long)
    lens[slots_t] = pos_t + 1
    eager = StepMeta(cache, slots_t, pos_t, 3, slots_t, lens, view_slots=6, decode_kv_len=length, prefills=[])
    gathered = StepMeta(cache, slots_t, pos_t, 3, slots_t, pos_t + 1, 0, length, [], gather=True)
    torch.testing.assert_close(run(gathered), run(eager), rtol=1e-5, atol=1e-5)


def test_bucketed_decode_gives_transformers_greedy_output(
    smollm2_dir: Path, smollm2_reference: tuple[list[list[int]], list[list[int]]]
) -> None:
    ids, want = smollm2_reference
    with running_engine(smollm2_dir, "cpu", "float32", max_batch=6, graphs=True) as engine:
        graphs = engine.runner.graphs
        assert graphs is not None and not graphs.cuda
        together = [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 4)]
        alone = [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 4, together=False)]
        assert graphs.replays >= 5 * (
            N_TOKENS - 1
        )  # every decode step of 1 + 4 batches went through a bucket
        assert {(4, 256), (1, 256)} <= graphs.captured  # 4 rows together, 1 alone
    assert together == want, describe_divergence("bucketed decode vs transformers", together, want)
    assert alone == want, describe_divergence("bucketed decode alone vs transformers", alone, want)


def test_graphs_stay_off_on_the_cpu_by_default(smollm2_dir: Path) -> None:
    with running_engine(smollm2_dir, "cpu", "float32") as engine:
        [(tokens, _)] = engine_generate(engine, prompts(smollm2_dir, 1), [4])
        assert engine.runner.graphs is None
    assert len(tokens) == 4
