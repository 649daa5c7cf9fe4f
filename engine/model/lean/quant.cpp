// int8 weight-only products on AVX-512 VNNI (engine.model.packed_linear's `Int8Linear` calls them).
//
// The activations are quantized too, per group along K, one scale d = max|x| / 127 and
// q = round(x / d) a group, so that the weights' bytes meet them in `vpdpbusd` (64 byte products an
// instruction) instead of being widened to floats one by one: at one decode row the widening, not
// the memory, bounded torch's int8 kernel (~15 GB/s of this machine's ~27), and at 8-32 rows Gemma
// 3's 262,144-row lm_head was compute-bound in it. Groups of 128 (as llama.cpp quantizes them for
// its K-quants; the default) add a group's two vpdpbusd in int32 before one conversion and one
// scaled add; groups of 32 (llama.cpp's Q8 blocks) convert and scale every vpdpbusd, ~30 % slower
// from 8 rows up. lm_heads take 32 (`Int8Linear.act_group`): per 128, SmolLM2's greedy answer to
// "What is the capital of France?" flipped from "The" to "L" (one bfloat16 step apart), while the
// layers' products moved perplexity by under +-0.5 % either way.
//
// int8: w = q * s_row (q int8, one scale a row: the refit of other GGUF types, the lm_head),
//   y = s_row * (sum_g d_g <q_g + 128, xq_g> - 128 sum_g d_g sum(xq_g)); the + 128 makes the weight
//   the unsigned operand of vpdpbusd.
//
// Tiles of 4 rows of x by 4 weight rows (16 sums, reduced at once and stored 16 at a time), the
// rows of x left over one at a time against 8 weight rows.
//
// (int4 weights stay on torch's kernel: quantizing their inputs to 8 bits, as llama.cpp does,
// cost SmolLM2 +0.9 % perplexity and flipped greedy tokens that sat a bfloat16 step apart; 16-bit
// inputs kept torch's results but were slower than torch's kernel from 8 rows up.)
//
// Each output is summed over K in one fixed order that depends on its row alone, whatever the
// number of rows or threads: batch invariance holds.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define HEARTH_VNNI 1
#include <immintrin.h>
#endif

#include "simd.h"

namespace {

constexpr int64_t kChunk = 64;  // bytes per vpdpbusd

#ifdef HEARTH_VNNI

using hearth::simd::load_bf16;
using hearth::simd::reduce16;
using hearth::simd::round_bf16;

// Activations [M, K] quantized per group of `group` (32 or 128; a row's last group of 128 may be 64):
// xq int8 [M, K]; dexp [M, K / 64, 16] floats, each 64-byte chunk's scales spread over the lanes
// vpdpbusd sums them into (per 32: lanes 0-7 and 8-15 hold its two groups'); xqd [M]
// (sum_g d_g sum(xq_g)).
struct QuantRows {
  std::vector<int8_t> xq;
  std::vector<float> dexp, xqd;
};

QuantRows quantize_rows(const c10::BFloat16* x, int64_t rows, int64_t k, int64_t stride, int64_t group) {
  const int64_t chunks = k / kChunk;
  QuantRows q;
  q.xq.resize(rows * k);
  q.dexp.resize(rows * chunks * 16);
  q.xqd.resize(rows);
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const c10::BFloat16* xr = x + r * stride;
      float xqd = 0;
      for (int64_t lo = 0; lo < k; lo += group) {
        const int64_t hi = std::min(k, lo + group);
        __m512 amax = _mm512_setzero_ps();
        for (int64_t i = lo; i < hi; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(load_bf16(xr + i)));
        const float d = _mm512_reduce_max_ps(amax) / 127.0f;
        const __m512 inv = _mm512_set1_ps(d > 0 ? 1.0f / d : 0.0f);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t i = lo; i < hi; i += 16) {
          const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(load_bf16(xr + i), inv));  // round to nearest even
          _mm_storeu_si128(reinterpret_cast<__m128i*>(q.xq.data() + r * k + i), _mm512_cvtsepi32_epi8(qi));
          sum = _mm512_add_epi32(sum, qi);
        }
        xqd += d * static_cast<float>(_mm512_reduce_add_epi32(sum));
        for (int64_t i = lo; i < hi; i += 32) {  // the lanes of [i, i + 32): half of chunk i / 64
          float* lanes = q.dexp.data() + (r * chunks + i / kChunk) * 16 + (i % kChunk) / 4;
          for (int l = 0; l < 8; ++l) lanes[l] = d;
        }
      }
      q.xqd[r] = xqd;
    }
  });
  return q;
}

constexpr int64_t kAhead = 8192;  // bytes of weights prefetched ahead of the block being read

// Ask for the cache lines of [p, p + bytes): one core's hardware prefetcher alone kept a weight
// stream at ~half the machine's read bandwidth.
inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}

// int8: rows [r, r + X) of x against R weight rows (already unsigned bytes, q + 128, `wstride`
// apart), out[x * R + i]: the byte products (vpdpbusd) of C chunks at a time (a group of 128: C = 2,
// of 32: C = 1) summed in int32, then scaled by their lanes' scales into a float sum, the same
// order whatever X; the row scales are applied after.
template <int64_t X, int64_t R, int64_t C>
__attribute__((always_inline)) inline void micro8(const QuantRows& q, int64_t r, int64_t k, const uint8_t* w, int64_t wstride, float* out) {
  const int64_t chunks = k / kChunk;
  __m512 acc[X][R];
  for (int64_t x = 0; x < X; ++x)
    for (int64_t i = 0; i < R; ++i) acc[x][i] = _mm512_setzero_ps();
  for (int64_t c0 = 0; c0 < chunks; c0 += C) {
    const int64_t c1 = std::min(chunks, c0 + C);
    __m512i p[X][R];
    for (int64_t x = 0; x < X; ++x)
      for (int64_t i = 0; i < R; ++i) p[x][i] = _mm512_setzero_si512();
    for (int64_t c = c0; c < c1; ++c) {
      __m512i xv[X];
      for (int64_t x = 0; x < X; ++x) xv[x] = _mm512_loadu_si512(q.xq.data() + (r + x) * k + c * kChunk);
      for (int64_t i = 0; i < R; ++i) {
        const __m512i wv = _mm512_loadu_si512(w + i * wstride + c * kChunk);
        for (int64_t x = 0; x < X; ++x) p[x][i] = _mm512_dpbusd_epi32(p[x][i], wv, xv[x]);
      }
    }
    for (int64_t x = 0; x < X; ++x) {
      const __m512 d = _mm512_loadu_ps(q.dexp.data() + ((r + x) * chunks + c0) * 16);
      for (int64_t i = 0; i < R; ++i) acc[x][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[x][i]), d, acc[x][i]);
    }
  }
  // out[x * R + i]: 16 sums reduced at once, or fewer one by one; the same tree either way (each
  // level adds lane l to lane l + w/2, as reduce16 does), so the same bits in any tile
  if constexpr (X * R == 16) {
    alignas(64) __m512 all[16];
    for (int64_t t = 0; t < 16; ++t) all[t] = acc[t / R][t % R];
    _mm512_storeu_ps(out, reduce16(all));
  } else {
    for (int64_t t = 0; t < X * R; ++t) out[t] = _mm512_reduce_add_ps(acc[t / R][t % R]);
  }
}

// y[r + x, j0 + c + i] for a 4 x 4 tile's sums out[x * 4 + i]: scale * (sum - 128 xqd), rounded to
// bfloat16 or kept in float32 (the same operations as the scalar path below, 16 at once)
template <typename Y>
inline void store4x4(const float* out, const QuantRows& q, int64_t r, const float* sc, Y* y, int64_t n) {
  const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);  // lane -> row of x
  const __m512 xqd = _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(_mm_loadu_ps(q.xqd.data() + r)));
  const __m512 v = _mm512_mul_ps(_mm512_broadcast_f32x4(_mm_loadu_ps(sc)),
                                 _mm512_sub_ps(_mm512_loadu_ps(out), _mm512_mul_ps(_mm512_set1_ps(128.0f), xqd)));
  if constexpr (std::is_same_v<Y, float>) {
    alignas(64) float f[16];
    _mm512_store_ps(f, v);
    for (int64_t x = 0; x < 4; ++x) std::memcpy(y + (r + x) * n, f + x * 4, 4 * sizeof(float));
  } else {
    alignas(32) uint16_t h[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(h), round_bf16(v));
    for (int64_t x = 0; x < 4; ++x) std::memcpy(y + (r + x) * n, h + x * 4, 4 * sizeof(uint16_t));
  }
}

template <int64_t C, typename S, typename Y>
void int8_rows(const QuantRows& q, int64_t rows, int64_t k, const int8_t* qdata, const S* scale, int64_t n, Y* y) {
  // Weight rows 8 at a time, as unsigned bytes (q + 128) in a buffer in L1: against 4 rows of x at
  // once in tiles of 4 x 4 (each load serves 4 sums), the rows left one at a time against all 8.
  constexpr int64_t kRows = 8;
  at::parallel_for(0, (n + kRows - 1) / kRows, 8, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> wq(kRows * k);
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    alignas(64) float out[16], sc[kRows];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t j0 = b * kRows, nr = std::min(kRows, n - j0);
      const uint8_t* w = reinterpret_cast<const uint8_t*>(qdata + j0 * k);
      if (j0 * k + kAhead < n * k) prefetch(w + kAhead, std::min(kRows * k, n * k - j0 * k - kAhead));
      for (int64_t i = 0; i < nr * k; i += kChunk) {
        _mm512_storeu_si512(wq.data() + i, _mm512_xor_si512(_mm512_loadu_si512(w + i), flip));
      }
      if (nr < kRows) std::memset(wq.data() + nr * k, 0x80, (kRows - nr) * k);  // the last block: zero rows
      for (int64_t i = 0; i < kRows; ++i) sc[i] = i < nr ? static_cast<float>(scale[j0 + i]) : 0.0f;
      int64_t r = 0;
      if (nr == kRows) {
        for (; r + 4 <= rows; r += 4) {
          for (int64_t c = 0; c < kRows; c += 4) {
            micro8<4, 4, C>(q, r, k, wq.data() + c * k, k, out);
            store4x4(out, q, r, sc + c, y + j0 + c, n);
          }
        }
      }
      for (; r < rows; ++r) {
        micro8<1, kRows, C>(q, r, k, wq.data(), k, out);
        for (int64_t i = 0; i < nr; ++i) {
          y[r * n + j0 + i] = static_cast<Y>(sc[i] * (out[i] - 128.0f * q.xqd[r]));
        }
      }
    }
  });
}

// The activations' grouping: per 32, every vpdpbusd converted and scaled (C = 1); per 128, two
// summed in int32 first (C = 2).
template <typename S, typename Y>
void int8_dispatch(const QuantRows& q, int64_t rows, int64_t k, const int8_t* qdata, const S* scale, int64_t n, Y* y,
                   int64_t group) {
  if (group == 32) {
    int8_rows<1>(q, rows, k, qdata, scale, n, y);
  } else {
    int8_rows<2>(q, rows, k, qdata, scale, n, y);
  }
}

#endif  // HEARTH_VNNI

void check_x(const at::Tensor& x, int64_t k, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kBFloat16, op,
              ": x must be bfloat16 [M, K] rows on the CPU");
  TORCH_CHECK(x.size(1) == k && k % kChunk == 0, op, ": x has ", x.size(1), " columns, the weight ", k,
              " (a multiple of 64)");
}

bool vnni() {
#ifdef HEARTH_VNNI
  return true;
#else
  return false;
#endif
}

// float_out: the products kept in float32 (an lm_head's logits: rounded to bfloat16, near ties
// became exact ties, and which token won one moved with the CPU); else bfloat16, x's dtype.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale, int64_t group,
                       bool float_out) {
  TORCH_CHECK(vnni(), "int8_linear: built without AVX-512 VNNI");
  const int64_t n = qdata.size(0), k = qdata.size(1);
  check_x(x, k, "int8_linear");
  TORCH_CHECK(qdata.is_contiguous() && qdata.scalar_type() == at::kChar, "int8_linear: qdata must be int8 [N, K]");
  TORCH_CHECK(scale.is_contiguous() && scale.numel() == n, "int8_linear: scale must be [N]");
  TORCH_CHECK(group == 32 || group == 128, "int8_linear: activations are quantized per 32 or per 128, not ", group);
  auto y = at::empty({x.size(0), n}, x.options().dtype(float_out ? at::kFloat : at::kBFloat16));
#ifdef HEARTH_VNNI
  const auto q = quantize_rows(x.data_ptr<c10::BFloat16>(), x.size(0), k, x.stride(0), group);
  TORCH_CHECK(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kBFloat16,
              "int8_linear: scale must be float32 or bfloat16");
  auto run = [&](const auto* sp) {
    if (float_out) {
      int8_dispatch(q, x.size(0), k, qdata.data_ptr<int8_t>(), sp, n, y.data_ptr<float>(), group);
    } else {
      int8_dispatch(q, x.size(0), k, qdata.data_ptr<int8_t>(), sp, n, y.data_ptr<c10::BFloat16>(), group);
    }
  };
  if (scale.scalar_type() == at::kFloat) {
    run(scale.data_ptr<float>());
  } else {
    run(scale.data_ptr<c10::BFloat16>());
  }
#endif
  return y;
}

// Each row r of x against its own weight, qdata[ids[r]] [N, K] with scale[ids[r]] [N]: a mixture of
// experts' token/expert pairs in one op, so that a decode step holding one can be traced (no expert
// row count read back by Python). Rows sharing an expert run together; a row's bits are those of
// int8_linear on it alone (the kernel's rows are independent of each other).
at::Tensor int8_linear_each(const at::Tensor& x, const at::Tensor& ids, const at::Tensor& qdata, const at::Tensor& scale,
                            int64_t group) {
  TORCH_CHECK(vnni(), "int8_linear_each: built without AVX-512 VNNI");
  TORCH_CHECK(qdata.dim() == 3 && qdata.is_contiguous() && qdata.scalar_type() == at::kChar,
              "int8_linear_each: qdata must be int8 [E, N, K]");
  const int64_t experts = qdata.size(0), n = qdata.size(1), k = qdata.size(2), m = x.size(0);
  check_x(x, k, "int8_linear_each");
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == m && ids.is_contiguous() && ids.scalar_type() == at::kLong,
              "int8_linear_each: ids must be int64 [M], one per row of x");
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == experts && scale.size(1) == n && scale.is_contiguous(),
              "int8_linear_each: scale must be [E, N]");
  TORCH_CHECK(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kBFloat16,
              "int8_linear_each: scale must be float32 or bfloat16");
  TORCH_CHECK(group == 32 || group == 128, "int8_linear_each: activations are quantized per 32 or per 128, not ", group);
  auto y = at::empty({m, n}, x.options());
#ifdef HEARTH_VNNI
  const int64_t* id = ids.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> rows_of(experts);
  for (int64_t r = 0; r < m; ++r) {
    TORCH_CHECK(id[r] >= 0 && id[r] < experts, "int8_linear_each: ids[", r, "] = ", id[r], " is not an expert");
    rows_of[id[r]].push_back(r);
  }
  const auto* xs = x.data_ptr<c10::BFloat16>();
  auto* ys = y.data_ptr<c10::BFloat16>();
  std::vector<c10::BFloat16> xe, ye;
  for (int64_t e = 0; e < experts; ++e) {
    const auto& rows = rows_of[e];
    const int64_t count = static_cast<int64_t>(rows.size());
    if (!count) continue;
    xe.resize(count * k);
    ye.resize(count * n);
    for (int64_t i = 0; i < count; ++i) std::memcpy(xe.data() + i * k, xs + rows[i] * x.stride(0), k * sizeof(c10::BFloat16));
    const auto q = quantize_rows(xe.data(), count, k, k, group);
    const int8_t* w = qdata.data_ptr<int8_t>() + e * n * k;
    if (scale.scalar_type() == at::kFloat) {
      int8_dispatch(q, count, k, w, scale.data_ptr<float>() + e * n, n, ye.data(), group);
    } else {
      int8_dispatch(q, count, k, w, scale.data_ptr<c10::BFloat16>() + e * n, n, ye.data(), group);
    }
    for (int64_t i = 0; i < count; ++i) std::memcpy(ys + rows[i] * n, ye.data() + i * n, n * sizeof(c10::BFloat16));
  }
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hearth, m) {
  m.def("vnni() -> bool", &vnni);
  m.def("int8_linear(Tensor x, Tensor qdata, Tensor scale, int group=128, bool float_out=False) -> Tensor");
  m.def("int8_linear_each(Tensor x, Tensor ids, Tensor qdata, Tensor scale, int group=128) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_linear_each", &int8_linear_each);
}
