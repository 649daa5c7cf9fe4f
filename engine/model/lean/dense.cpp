// bfloat16 products on AVX512-BF16 (engine/model/lean/projections.py's `Bf16`).
//
// oneDNN's packed products give a row the same bits only from 2 rows up, so the engine pads every
// step to 4 rows: at one decode stream that is 4 rows of work and oneDNN's small-row kernel. Here
// each output is one `vdpbf16ps` sum over K in a fixed order that depends on its own row and
// weight row alone, so a product of any number of rows, one included, gives a row the same bits:
// no padding, and the weights stay as they are ([N, K] rows, no packed copy).
//
// Tiles of 4 rows of x by 4 weight rows (16 sums in registers); x is taken 256 rows at a time so a
// long prompt's rows stay in cache while every weight row passes; the weights are prefetched ahead.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define HEARTH_BF16DOT 1
#include <immintrin.h>
#endif

#include "simd.h"

namespace {

#ifdef HEARTH_BF16DOT

using hearth::simd::reduce16;
using hearth::simd::widen;

constexpr int64_t kTile = 4;        // rows of x and of the weight a tile computes
constexpr int64_t kBlockRows = 256; // rows of x kept in cache while the weights pass
constexpr int64_t kAhead = 8192;     // bytes of weights prefetched ahead

inline __m512bh load_bh(const c10::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline __m512bh load_bh(const c10::BFloat16* p, __mmask32 mask) { return (__m512bh)_mm512_maskz_loadu_epi16(mask, p); }

// MR rows of x (xstride apart) against NR weight rows (k apart), MR * NR <= 16: out[i * NR + j].
template <int64_t MR, int64_t NR>
__attribute__((always_inline)) inline void tile(const c10::BFloat16* x, int64_t xstride, const c10::BFloat16* w, int64_t k,
                                                 float* out, bool ahead) {
  static_assert(MR * NR <= 16, "a tile is at most 16 sums");
  __m512 acc[MR][NR];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    __m512bh wv[NR];
    for (int64_t j = 0; j < NR; ++j) {
      // the weights a few tiles on, a cache line per line read (past the end: a harmless hint)
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(w + j * k + c) + kAhead, _MM_HINT_T0);
      wv[j] = load_bh(w + j * k + c);
    }
    for (int64_t i = 0; i < MR; ++i) {
      const __m512bh xv = load_bh(x + i * xstride + c);
      for (int64_t j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  if (c < k) {
    const __mmask32 mask = static_cast<__mmask32>((1ULL << (k - c)) - 1);
    __m512bh wv[NR];
    for (int64_t j = 0; j < NR; ++j) wv[j] = load_bh(w + j * k + c, mask);
    for (int64_t i = 0; i < MR; ++i) {
      const __m512bh xv = load_bh(x + i * xstride + c, mask);
      for (int64_t j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  alignas(64) __m512 all[16];  // the tile's sums, zeros past them (a register array would spill)
  for (int64_t t = 0; t < 16; ++t) all[t] = t < MR * NR ? acc[t / NR][t % NR] : _mm512_setzero_ps();
  _mm512_storeu_ps(out, reduce16(all));  // out holds 16 floats; the first MR * NR are the tile's
}

template <int64_t NR>
inline void tile_rows(int64_t mr, const c10::BFloat16* x, int64_t xstride, const c10::BFloat16* w, int64_t k, float* out,
                      bool ahead) {
  switch (mr) {
    case 4: return tile<4, NR>(x, xstride, w, k, out, ahead);
    case 3: return tile<3, NR>(x, xstride, w, k, out, ahead);
    case 2: return tile<2, NR>(x, xstride, w, k, out, ahead);
    default: return tile<1, NR>(x, xstride, w, k, out, ahead);
  }
}

inline __m256i narrow(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }  // round to nearest even, as c10

// Where a tile's sums go: y = round(sum + bias), then round(y + residual), as `residual + linear(x)`.
struct Out {
  const c10::BFloat16* bias;
  const c10::BFloat16* residual;
  int64_t rstride, n;
  c10::BFloat16* y;
  inline void put(int64_t r, int64_t j, float v) const {
    if (bias) v += static_cast<float>(bias[j]);
    c10::BFloat16 o = static_cast<c10::BFloat16>(v);
    if (residual) o = static_cast<c10::BFloat16>(static_cast<float>(o) + static_cast<float>(residual[r * rstride + j]));
    y[r * n + j] = o;
  }
  // 16 sums of row r, columns j..j+15 (the one-row tile), as `put` rounds them
  inline void put16(int64_t r, int64_t j, __m512 v) const {
    if (bias) v = _mm512_add_ps(v, widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + j))));
    __m256i o = narrow(v);
    if (residual) {
      const __m256i res = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(residual + r * rstride + j));
      o = narrow(_mm512_add_ps(widen(o), widen(res)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + r * n + j), o);
  }
  // a 4 x 4 tile's sums (lane 4i + jj: row r + i, column j + jj), as `put` rounds them
  inline void put4x4(int64_t r, int64_t j, __m512 v) const {
    if (bias) {
      int64_t b4;
      std::memcpy(&b4, bias + j, 8);
      v = _mm512_add_ps(v, widen(_mm256_set1_epi64x(b4)));
    }
    __m256i o = narrow(v);
    if (residual) {
      int64_t q[4];
      for (int i = 0; i < 4; ++i) std::memcpy(&q[i], residual + (r + i) * rstride + j, 8);
      o = narrow(_mm512_add_ps(widen(o), widen(_mm256_setr_epi64x(q[0], q[1], q[2], q[3]))));
    }
    alignas(32) int64_t rows[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(rows), o);
    for (int i = 0; i < 4; ++i) std::memcpy(y + (r + i) * n + j, &rows[i], 8);
  }
};

// One row of x: 16 weight rows a tile.
void bf16_row(const c10::BFloat16* x, const c10::BFloat16* w, int64_t n, int64_t k, const Out& o) {
  constexpr int64_t kWide = 16;
  at::parallel_for(0, (n + kWide - 1) / kWide, 1, [&](int64_t begin, int64_t end) {
    float out[16];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t j0 = b * kWide, nr = std::min(kWide, n - j0);
      if (nr == kWide) {
        tile<1, kWide>(x, 0, w + j0 * k, k, out, true);
        o.put16(0, j0, _mm512_loadu_ps(out));
        continue;
      }
      for (int64_t j = 0; j < nr; ++j) {
        float one[16];
        tile<1, 1>(x, 0, w + (j0 + j) * k, k, one, true);
        o.put(0, j0 + j, one[0]);
      }
    }
  });
}

void bf16_rows(const c10::BFloat16* x, int64_t rows, int64_t xstride, const c10::BFloat16* w, int64_t n, int64_t k,
               const Out& o) {
  if (rows == 1) return bf16_row(x, w, n, k, o);
  for (int64_t m0 = 0; m0 < rows; m0 += kBlockRows) {
    const int64_t m1 = std::min(rows, m0 + kBlockRows);
    at::parallel_for(0, (n + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
      float out[16];
      for (int64_t b = begin; b < end; ++b) {
        const int64_t j0 = b * kTile, nr = std::min(kTile, n - j0);
        const c10::BFloat16* wb = w + j0 * k;
        for (int64_t r = m0; r < m1; r += kTile) {
          const int64_t mr = std::min(kTile, m1 - r);
          if (nr == kTile) {
            tile_rows<kTile>(mr, x + r * xstride, xstride, wb, k, out, r == m0);
            if (mr == kTile) {
              o.put4x4(r, j0, _mm512_loadu_ps(out));
              continue;
            }
            for (int64_t i = 0; i < mr; ++i)
              for (int64_t j = 0; j < nr; ++j) o.put(r + i, j0 + j, out[i * kTile + j]);
          } else {
            for (int64_t j = 0; j < nr; ++j) {
              tile_rows<1>(mr, x + r * xstride, xstride, wb + j * k, k, out, r == m0);
              for (int64_t i = 0; i < mr; ++i) o.put(r + i, j0 + j, out[i]);
            }
          }
        }
      }
    });
  }
}

#endif  // HEARTH_BF16DOT

bool bf16_dot() {
#ifdef HEARTH_BF16DOT
  return true;
#else
  return false;
#endif
}

// y = x @ w.T (+ bias), rounded to bfloat16, then + residual (rounded again, as `residual + linear(x)`).
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK(bf16_dot(), "bf16_linear: built without AVX512-BF16");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kBFloat16,
              "bf16_linear: x must be bfloat16 [M, K] rows on the CPU");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kBFloat16 && w.size(1) == x.size(1),
              "bf16_linear: w must be contiguous bfloat16 [N, K]");
  const int64_t rows = x.size(0), n = w.size(0), k = w.size(1);
  const c10::BFloat16* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == n && bias->scalar_type() == at::kBFloat16, "bf16_linear: bias must be bfloat16 [N]");
    b = bias->data_ptr<c10::BFloat16>();
  }
  const c10::BFloat16* res = nullptr;
  int64_t rstride = 0;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->dim() == 2 && residual->size(0) == rows && residual->size(1) == n && residual->stride(1) == 1 &&
                    residual->scalar_type() == at::kBFloat16,
                "bf16_linear: residual must be bfloat16 [M, N] rows");
    res = residual->data_ptr<c10::BFloat16>();
    rstride = residual->stride(0);
  }
  auto y = at::empty({rows, n}, x.options());
#ifdef HEARTH_BF16DOT
  const Out out{b, res, rstride, n, y.data_ptr<c10::BFloat16>()};
  bf16_rows(x.data_ptr<c10::BFloat16>(), rows, x.stride(0), w.data_ptr<c10::BFloat16>(), n, k, out);
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hearth, m) {
  m.def("bf16_dot() -> bool", &bf16_dot);
  m.def("bf16_linear(Tensor x, Tensor w, Tensor? bias, Tensor? residual) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) { m.impl("bf16_linear", &bf16_linear); }
