// bfloat16 products on AVX512-BF16, float32 ones on AVX-512F (engine/model/lean/projections.py's `Dot`).
//
// oneDNN's packed products give a row the same bits only from 2 rows up, so the engine pads every
// step to 4 rows: at one decode stream that is 4 rows of work and oneDNN's small-row kernel. Here
// each output is one `vdpbf16ps` sum over K in a fixed order that depends on its own row and
// weight row alone, so a product of any number of rows, one included, gives a row the same bits:
// no padding, and the weights stay as they are ([N, K] rows, no packed copy).
//
// Tiles of 4 rows of x by 4 weight rows (16 sums in registers); x is taken 256 rows at a time so a
// long prompt's rows stay in cache while every weight row passes; the weights are prefetched ahead.
// float32 products (AVX-512F) take another shape: see `f32_tile`.

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

#ifdef __AVX512F__
using hearth::simd::reduce16;
using hearth::simd::widen;

constexpr int64_t kTile = 4;        // rows of x and of the weight a tile computes
constexpr int64_t kBlockRows = 256; // bfloat16 rows of x kept in cache while the weights pass
constexpr int64_t kAhead = 8192;     // bytes of weights prefetched ahead
#endif

#ifdef HEARTH_BF16DOT
// A dot-product policy: the element type, lanes per step, loads and the multiply-add into 16 float sums.
struct BF16 {
  using T = c10::BFloat16;
  using V = __m512bh;
  static constexpr int64_t kStep = 32;
  static inline V load(const T* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static inline V load(const T* p, int64_t left) {
    return (__m512bh)_mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ULL << left) - 1), p);
  }
  static inline __m512 madd(__m512 acc, V x, V w) { return _mm512_dpbf16_ps(acc, x, w); }
};

#endif  // HEARTH_BF16DOT

#ifdef __AVX512F__
// MR rows of x (xstride apart) against NR weight rows (k apart), MR * NR <= 16: out[i * NR + j].
template <class D, int64_t MR, int64_t NR>
__attribute__((always_inline)) inline void tile(const typename D::T* x, int64_t xstride, const typename D::T* w,
                                                 int64_t k, float* out, bool ahead) {
  static_assert(MR * NR <= 16, "a tile is at most 16 sums");
  constexpr int64_t kAheadElems = kAhead / sizeof(typename D::T);
  __m512 acc[MR][NR];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + D::kStep <= k; c += D::kStep) {
    typename D::V wv[NR];
    for (int64_t j = 0; j < NR; ++j) {
      // the weights a few tiles on, a cache line per line read (past the end: a harmless hint)
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(w + j * k + c + kAheadElems), _MM_HINT_T0);
      wv[j] = D::load(w + j * k + c);
    }
    for (int64_t i = 0; i < MR; ++i) {
      const typename D::V xv = D::load(x + i * xstride + c);
      for (int64_t j = 0; j < NR; ++j) acc[i][j] = D::madd(acc[i][j], xv, wv[j]);
    }
  }
  if (c < k) {
    typename D::V wv[NR];
    for (int64_t j = 0; j < NR; ++j) wv[j] = D::load(w + j * k + c, k - c);
    for (int64_t i = 0; i < MR; ++i) {
      const typename D::V xv = D::load(x + i * xstride + c, k - c);
      for (int64_t j = 0; j < NR; ++j) acc[i][j] = D::madd(acc[i][j], xv, wv[j]);
    }
  }
  alignas(64) __m512 all[16];  // the tile's sums, zeros past them (a register array would spill)
  for (int64_t t = 0; t < 16; ++t) all[t] = t < MR * NR ? acc[t / NR][t % NR] : _mm512_setzero_ps();
  _mm512_storeu_ps(out, reduce16(all));  // out holds 16 floats; the first MR * NR are the tile's
}

template <class D, int64_t NR>
inline void tile_rows(int64_t mr, const typename D::T* x, int64_t xstride, const typename D::T* w, int64_t k,
                      float* out, bool ahead) {
  switch (mr) {
    case 4: return tile<D, 4, NR>(x, xstride, w, k, out, ahead);
    case 3: return tile<D, 3, NR>(x, xstride, w, k, out, ahead);
    case 2: return tile<D, 2, NR>(x, xstride, w, k, out, ahead);
    default: return tile<D, 1, NR>(x, xstride, w, k, out, ahead);
  }
}

// Where a float32 product's sums go: y = (sum + bias) + residual, as `residual + linear(x)`.
struct OutF32 {
  const float* bias;
  const float* residual;
  int64_t rstride, n;
  float* y;
};
#endif  // __AVX512F__

#ifdef HEARTH_BF16DOT
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

#endif  // HEARTH_BF16DOT

#ifdef __AVX512F__
// One row of x: 16 weight rows a tile.
template <class D, class O>
void dot_row(const typename D::T* x, const typename D::T* w, int64_t n, int64_t k, const O& o) {
  constexpr int64_t kWide = 16;
  at::parallel_for(0, (n + kWide - 1) / kWide, 1, [&](int64_t begin, int64_t end) {
    float out[16];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t j0 = b * kWide, nr = std::min(kWide, n - j0);
      if (nr == kWide) {
        tile<D, 1, kWide>(x, 0, w + j0 * k, k, out, true);
        o.put16(0, j0, _mm512_loadu_ps(out));
        continue;
      }
      for (int64_t j = 0; j < nr; ++j) {
        float one[16];
        tile<D, 1, 1>(x, 0, w + (j0 + j) * k, k, one, true);
        o.put(0, j0 + j, one[0]);
      }
    }
  });
}

template <class D, class O>
void dot_rows(const typename D::T* x, int64_t rows, int64_t xstride, const typename D::T* w, int64_t n, int64_t k,
              const O& o) {
  if (rows == 1) return dot_row<D>(x, w, n, k, o);
  constexpr int64_t block = kBlockRows * 2 / sizeof(typename D::T);  // the same bytes of x: 128 float rows
  for (int64_t m0 = 0; m0 < rows; m0 += block) {
    const int64_t m1 = std::min(rows, m0 + block);
    at::parallel_for(0, (n + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
      float out[16];
      for (int64_t b = begin; b < end; ++b) {
        const int64_t j0 = b * kTile, nr = std::min(kTile, n - j0);
        const typename D::T* wb = w + j0 * k;
        for (int64_t r = m0; r < m1; r += kTile) {
          const int64_t mr = std::min(kTile, m1 - r);
          if (nr == kTile) {
            tile_rows<D, kTile>(mr, x + r * xstride, xstride, wb, k, out, r == m0);
            if (mr == kTile) {
              o.put4x4(r, j0, _mm512_loadu_ps(out));
              continue;
            }
            for (int64_t i = 0; i < mr; ++i)
              for (int64_t j = 0; j < nr; ++j) o.put(r + i, j0 + j, out[i * kTile + j]);
          } else {
            for (int64_t j = 0; j < nr; ++j) {
              tile_rows<D, 1>(mr, x + r * xstride, xstride, wb + j * k, k, out, r == m0);
              for (int64_t i = 0; i < mr; ++i) o.put(r + i, j0 + j, out[i]);
            }
          }
        }
      }
    });
  }
}
#endif  // __AVX512F__

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
  dot_rows<BF16>(x.data_ptr<c10::BFloat16>(), rows, x.stride(0), w.data_ptr<c10::BFloat16>(), n, k, out);
#endif
  return y;
}

#ifdef __AVX512F__
// float32: the weight packed once as [N / 16][K][16] (`f32_pack`), and MR rows of x against NB blocks of
// 16 columns: at each k, NB weight vectors times x[i][k] broadcast, added into MR x NB sums. Every output
// is one multiply-add chain over k in order, whatever MR and NB: a row's bits do not depend on the rows
// beside it. No horizontal sums, and at MR = 6 ten loads feed 24 multiply-adds.
constexpr int64_t kMR = 8, kNB = 3;
constexpr int64_t kAheadLines = 32;  // weight lines (k steps) prefetched ahead, on a block's first rows

template <int64_t MR, int64_t NB>
void f32_tile(const float* x, int64_t xstride, const float* p, int64_t k, int64_t r, int64_t col, const OutF32& o,
              bool ahead) {
  __m512 acc[MR][NB];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t block = k * 16;  // floats between column blocks
  for (int64_t c = 0; c < k; ++c) {
    __m512 w[NB];
    for (int64_t j = 0; j < NB; ++j) {
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(p + j * block + (c + kAheadLines) * 16), _MM_HINT_T0);
      w[j] = _mm512_loadu_ps(p + j * block + c * 16);
    }
    for (int64_t i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * xstride + c]);
      for (int64_t j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xb, w[j], acc[i][j]);
    }
  }
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NB; ++j) {
      const int64_t at = col + j * 16, left = o.n - at;
      const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1U << left) - 1);
      __m512 v = acc[i][j];
      if (o.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o.bias + at));
      if (o.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o.residual + (r + i) * o.rstride + at));
      _mm512_mask_storeu_ps(o.y + (r + i) * o.n + at, m, v);
    }
}

template <int64_t NB>
void f32_tile_rows(int64_t mr, const float* x, int64_t xstride, const float* p, int64_t k, int64_t r, int64_t col,
                   const OutF32& o) {
  const bool ahead = r == 0;  // the weights come from memory on the first rows, from cache after
  switch (mr) {
    case 8: return f32_tile<8, NB>(x, xstride, p, k, r, col, o, ahead);
    case 7: return f32_tile<7, NB>(x, xstride, p, k, r, col, o, ahead);
    case 6: return f32_tile<6, NB>(x, xstride, p, k, r, col, o, ahead);
    case 5: return f32_tile<5, NB>(x, xstride, p, k, r, col, o, ahead);
    case 4: return f32_tile<4, NB>(x, xstride, p, k, r, col, o, ahead);
    case 3: return f32_tile<3, NB>(x, xstride, p, k, r, col, o, ahead);
    case 2: return f32_tile<2, NB>(x, xstride, p, k, r, col, o, ahead);
    default: return f32_tile<1, NB>(x, xstride, p, k, r, col, o, ahead);
  }
}

void f32_rows(const float* x, int64_t rows, int64_t xstride, const float* p, int64_t k, const OutF32& o) {
  const int64_t blocks = (o.n + 15) / 16, groups = (blocks + kNB - 1) / kNB;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t b0 = g * kNB, nb = std::min(kNB, blocks - b0);
      const float* pg = p + b0 * k * 16;
      for (int64_t r = 0; r < rows; r += kMR) {
        const int64_t mr = std::min(kMR, rows - r);
        const float* xr = x + r * xstride;
        switch (nb) {
          case 3: f32_tile_rows<3>(mr, xr, xstride, pg, k, r, b0 * 16, o); break;
          case 2: f32_tile_rows<2>(mr, xr, xstride, pg, k, r, b0 * 16, o); break;
          default: f32_tile_rows<1>(mr, xr, xstride, pg, k, r, b0 * 16, o); break;
        }
      }
    }
  });
}
#endif  // __AVX512F__

bool f32_dot() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

// y = x @ w.T (+ bias) (+ residual), float32, w packed by `f32_pack` from [n, K]: each output one
// fixed-order sum (see `f32_tile`).
at::Tensor f32_linear(const at::Tensor& x, const at::Tensor& w, int64_t n, const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK(f32_dot(), "f32_linear: built without AVX-512");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kFloat,
              "f32_linear: x must be float32 [M, K] rows on the CPU");
  TORCH_CHECK(w.dim() == 3 && w.is_contiguous() && w.scalar_type() == at::kFloat && w.size(0) == (n + 15) / 16 &&
                  w.size(1) == x.size(1) && w.size(2) == 16,
              "f32_linear: w must be float32 packed by f32_pack: [ceil(n / 16), K, 16]");
  const int64_t rows = x.size(0), k = x.size(1);
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == n && bias->scalar_type() == at::kFloat,
                "f32_linear: bias must be float32 [N]");
    b = bias->data_ptr<float>();
  }
  const float* res = nullptr;
  int64_t rstride = 0;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->dim() == 2 && residual->size(0) == rows && residual->size(1) == n && residual->stride(1) == 1 &&
                    residual->scalar_type() == at::kFloat,
                "f32_linear: residual must be float32 [M, N] rows");
    res = residual->data_ptr<float>();
    rstride = residual->stride(0);
  }
  auto y = at::empty({rows, n}, x.options());
#ifdef __AVX512F__
  const OutF32 out{b, res, rstride, n, y.data_ptr<float>()};
  f32_rows(x.data_ptr<float>(), rows, x.stride(0), w.data_ptr<float>(), k, out);
#endif
  return y;
}

// w [N, K] -> [ceil(N / 16), K, 16]: 16 columns' weights side by side at each k (zeros past N).
at::Tensor f32_pack(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat, "f32_pack: w must be float32 [N, K]");
  const int64_t n = w.size(0), k = w.size(1), blocks = (n + 15) / 16;
  auto padded = at::zeros({blocks * 16, k}, w.options());
  padded.narrow(0, 0, n).copy_(w);
  return padded.view({blocks, 16, k}).transpose(1, 2).contiguous();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hearth, m) {
  m.def("bf16_dot() -> bool", &bf16_dot);
  m.def("bf16_linear(Tensor x, Tensor w, Tensor? bias, Tensor? residual) -> Tensor");
  m.def("f32_dot() -> bool", &f32_dot);
  m.def("f32_linear(Tensor x, Tensor w, int n, Tensor? bias, Tensor? residual) -> Tensor");
  m.def("f32_pack(Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("bf16_linear", &bf16_linear);
  m.impl("f32_linear", &f32_linear);
  m.impl("f32_pack", &f32_pack);
}
