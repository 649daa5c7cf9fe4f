// Hearth's products of plain weights on the CPU: float32 ones on AVX-512F, bfloat16 ones where the CPU
// has AVX512-BF16 too (engine/model/lean/projections.py's `Dot`).
//
// oneDNN's packed products give a row the same bits only from 2 rows up, so the engine padded every
// step to 4 rows: at one decode stream that was 4 rows of work and oneDNN's small-row kernel. Here
// each output is one multiply-add chain over K in order, which depends on its own row and weight
// column alone, so a product of any number of rows, one included, gives a row the same bits: no
// padding. The weights are packed once, 16 columns side by side; a tile is 8 rows of x by 48 columns
// (24 sums in registers), with the weights prefetched ahead on a block's first rows. bfloat16 weights
// and activations are widened to float32 (exactly) and multiplied in float32 (`vfmadd`): on the 2-core
// Xeon measured that ran 1.0-1.65x the speed of `vdpbf16ps` dot products, the most at many rows.

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
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "simd.h"

namespace {

#ifdef __AVX512F__
using hearth::simd::widen;
#endif

#ifdef HEARTH_BF16DOT
inline __m256i narrow(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }  // round to nearest even, as c10
#endif

#ifdef __AVX512F__
// Packed products: the weight packed once as [N / 16][K][16] (`pack_columns`: float32 or bfloat16),
// x taken as float32, and MR rows of x against NB blocks of 16 columns: at each k, NB weight vectors
// (bfloat16 ones widened, exactly) times x[i][k] broadcast, added into MR x NB float sums. Every output
// is one multiply-add chain over k in order, whatever MR and NB: a row's bits do not depend on the rows
// beside it. No horizontal sums; at MR = 8, NB = 3 eleven loads feed 24 multiply-adds.
constexpr int64_t kMR = 8, kNB = 3;
constexpr int64_t kAheadBytes = 2048;  // weights prefetched ahead in each column block, on its first rows

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

// A float32 output: y = (sum + bias) + residual, as `residual + linear(x)`.
struct StoreF32 {
  const float* bias;
  const float* residual;
  int64_t rstride, n;
  float* y;
  inline void store(int64_t row, int64_t at, __mmask16 m, __m512 v) const {
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + at));
    if (residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, residual + row * rstride + at));
    _mm512_mask_storeu_ps(y + row * n + at, m, v);
  }
};

// How a tile takes one step along K (`S` below). Widened: one k a step, x as float32, the weights
// float32 or bfloat16 widened (exactly), `vfmadd`. Pairs (`Pairs`, further down): two k's a step.
template <class W>
struct Widened {
  using X = float;
  using Weight = W;
  using Vec = __m512;
  static constexpr int64_t kWidth = 16;  // a column block's weights a step
  static __m512 weights(const W* p) { return load16(p); }
  static __m512 operand(const float* x, int64_t c) { return _mm512_set1_ps(x[c]); }
  static __m512 madd(__m512 acc, __m512 x, __m512 w) { return _mm512_fmadd_ps(x, w, acc); }
};

template <class S, class O, int64_t MR, int64_t NB>
void packed_tile(const typename S::X* x, int64_t xstride, const typename S::Weight* p, int64_t steps, int64_t r,
                 int64_t col, const O& o, bool ahead) {
  __m512 acc[MR][NB];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t block = steps * S::kWidth;  // elements between column blocks
  for (int64_t c = 0; c < steps; ++c) {
    typename S::Vec w[NB];
    for (int64_t j = 0; j < NB; ++j) {
      const auto* at = p + j * block + c * S::kWidth;
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(at) + kAheadBytes, _MM_HINT_T0);
      w[j] = S::weights(at);
    }
    for (int64_t i = 0; i < MR; ++i) {
      const auto xb = S::operand(x + i * xstride, c);
      for (int64_t j = 0; j < NB; ++j) acc[i][j] = S::madd(acc[i][j], xb, w[j]);
    }
  }
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NB; ++j) {
      const int64_t at = col + j * 16, left = o.n - at;
      const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1U << left) - 1);
      o.store(r + i, at, m, acc[i][j]);
    }
}

template <class S, class O, int64_t NB>
void packed_tile_rows(int64_t mr, const typename S::X* x, int64_t xstride, const typename S::Weight* p,
                      int64_t steps, int64_t r, int64_t col, const O& o) {
  const bool ahead = r == 0;  // the weights come from memory on the first rows, from cache after
  switch (mr) {
    case 8: return packed_tile<S, O, 8, NB>(x, xstride, p, steps, r, col, o, ahead);
    case 7: return packed_tile<S, O, 7, NB>(x, xstride, p, steps, r, col, o, ahead);
    case 6: return packed_tile<S, O, 6, NB>(x, xstride, p, steps, r, col, o, ahead);
    case 5: return packed_tile<S, O, 5, NB>(x, xstride, p, steps, r, col, o, ahead);
    case 4: return packed_tile<S, O, 4, NB>(x, xstride, p, steps, r, col, o, ahead);
    case 3: return packed_tile<S, O, 3, NB>(x, xstride, p, steps, r, col, o, ahead);
    case 2: return packed_tile<S, O, 2, NB>(x, xstride, p, steps, r, col, o, ahead);
    default: return packed_tile<S, O, 1, NB>(x, xstride, p, steps, r, col, o, ahead);
  }
}

template <class S, class O>
void packed_rows(const typename S::X* x, int64_t rows, int64_t xstride, const typename S::Weight* p, int64_t steps,
                 const O& o) {
  const int64_t blocks = (o.n + 15) / 16, groups = (blocks + kNB - 1) / kNB;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t b0 = g * kNB, nb = std::min(kNB, blocks - b0);
      const auto* pg = p + b0 * steps * S::kWidth;
      for (int64_t r = 0; r < rows; r += kMR) {
        const int64_t mr = std::min(kMR, rows - r);
        const auto* xr = x + r * xstride;
        switch (nb) {
          case 3: packed_tile_rows<S, O, 3>(mr, xr, xstride, pg, steps, r, b0 * 16, o); break;
          case 2: packed_tile_rows<S, O, 2>(mr, xr, xstride, pg, steps, r, b0 * 16, o); break;
          default: packed_tile_rows<S, O, 1>(mr, xr, xstride, pg, steps, r, b0 * 16, o); break;
        }
      }
    }
  });
}
#endif  // __AVX512F__

#ifdef HEARTH_BF16DOT
// A bfloat16 output, rounded as `residual + linear(x)` rounds: round(round(sum + bias) + residual).
struct StoreBF16 {
  const c10::BFloat16* bias;
  const c10::BFloat16* residual;
  int64_t rstride, n;
  c10::BFloat16* y;
  inline void store(int64_t row, int64_t at, __mmask16 m, __m512 v) const {
    if (bias) v = _mm512_add_ps(v, widen(_mm256_maskz_loadu_epi16(m, bias + at)));
    __m256i o = narrow(v);
    if (residual) o = narrow(_mm512_add_ps(widen(o), widen(_mm256_maskz_loadu_epi16(m, residual + row * rstride + at))));
    _mm256_mask_storeu_epi16(y + row * n + at, m, o);
  }
};

// Packed pairs (`pack_pairs`), for CPUs where `vdpbf16ps` outruns widened multiply-adds (AMD's Zen 4
// and 5: ~1.75x the multiply-adds a second on this project's EPYC): the weight packed as
// [N / 16][K / 2][16][2], each 512-bit vector 16 columns' weights at k and k + 1; x's bfloat16 pair
// (x[k], x[k + 1]) broadcast. Every output is one chain of `vdpbf16ps` over the pairs in order,
// whatever MR and NB: a row's bits do not depend on the rows beside it.
struct Pairs {
  using X = c10::BFloat16;
  using Weight = c10::BFloat16;
  using Vec = __m512bh;
  static constexpr int64_t kWidth = 32;
  static __m512bh weights(const c10::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static __m512bh operand(const c10::BFloat16* x, int64_t c) {
    int32_t pair;
    std::memcpy(&pair, x + 2 * c, sizeof(pair));
    return (__m512bh)_mm512_set1_epi32(pair);
  }
  static __m512 madd(__m512 acc, __m512bh x, __m512bh w) { return _mm512_dpbf16_ps(acc, x, w); }
};
#endif  // HEARTH_BF16DOT

bool bf16_dot() {
#ifdef HEARTH_BF16DOT
  return true;
#else
  return false;
#endif
}

bool f32_dot() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

// y = x @ w.T (+ bias) (+ residual) for w [n, K] packed by `pack_columns` (float32 or bfloat16), x of
// w's dtype (bfloat16 rows are widened to float32 first): each output one fixed-order sum (`packed_tile`);
// bfloat16 outputs are rounded as `residual + linear(x)` rounds them.
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& w, int64_t n, const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& residual) {
  const auto dtype = w.scalar_type();
  TORCH_CHECK(dtype == at::kFloat ? f32_dot() : (dtype == at::kBFloat16 && bf16_dot()),
              "packed_linear: no kernel for this dtype on this CPU");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == dtype,
              "packed_linear: x must be [M, K] rows of w's dtype on the CPU");
  const bool pairs = w.dim() == 4;
  TORCH_CHECK(pairs ? (dtype == at::kBFloat16 && w.is_contiguous() && w.size(0) == (n + 15) / 16 &&
                       w.size(1) == (x.size(1) + 1) / 2 && w.size(2) == 16 && w.size(3) == 2)
                    : (w.dim() == 3 && w.is_contiguous() && w.size(0) == (n + 15) / 16 && w.size(1) == x.size(1) &&
                       w.size(2) == 16),
              "packed_linear: w must be packed by pack_columns ([ceil(n / 16), K, 16]) or pack_pairs "
              "([ceil(n / 16), ceil(K / 2), 16, 2])");
  const int64_t rows = x.size(0), k = x.size(1);
  for (const auto& t : {bias, residual})
    TORCH_CHECK(!t.has_value() || !t->defined() || t->scalar_type() == dtype, "packed_linear: bias and residual in w's dtype");
  const bool has_bias = bias.has_value() && bias->defined();
  const bool has_res = residual.has_value() && residual->defined();
  if (has_bias) TORCH_CHECK(bias->is_contiguous() && bias->numel() == n, "packed_linear: bias must be [N]");
  if (has_res)
    TORCH_CHECK(residual->dim() == 2 && residual->size(0) == rows && residual->size(1) == n && residual->stride(1) == 1,
                "packed_linear: residual must be [M, N] rows");
  const int64_t rstride = has_res ? residual->stride(0) : 0;
  auto y = at::empty({rows, n}, x.options());
#ifdef __AVX512F__
  if (dtype == at::kFloat) {
    const StoreF32 out{has_bias ? bias->data_ptr<float>() : nullptr, has_res ? residual->data_ptr<float>() : nullptr,
                       rstride, n, y.data_ptr<float>()};
    packed_rows<Widened<float>>(x.data_ptr<float>(), rows, x.stride(0), w.data_ptr<float>(), k, out);
    return y;
  }
#endif
#ifdef HEARTH_BF16DOT
  const StoreBF16 out{has_bias ? bias->data_ptr<c10::BFloat16>() : nullptr,
                      has_res ? residual->data_ptr<c10::BFloat16>() : nullptr, rstride, n, y.data_ptr<c10::BFloat16>()};
  if (pairs) {
    // an odd K gets a zero column (the packed weight's last pair ends in 0)
    const at::Tensor xe = k % 2 != 0 ? at::constant_pad_nd(x, {0, 1}, 0) : x;
    packed_rows<Pairs>(xe.data_ptr<c10::BFloat16>(), rows, xe.stride(0), w.data_ptr<c10::BFloat16>(), w.size(1), out);
    return y;
  }
  const at::Tensor xf = x.to(at::kFloat);  // exact: every bfloat16 is a float32
  packed_rows<Widened<c10::BFloat16>>(xf.data_ptr<float>(), rows, xf.stride(0), w.data_ptr<c10::BFloat16>(), k, out);
#endif
  return y;
}

// w [N, K] -> [ceil(N / 16), K, 16]: 16 columns' weights side by side at each k (zeros past N).
at::Tensor pack_columns(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2, "pack_columns: w must be [N, K]");
  const int64_t n = w.size(0), k = w.size(1), blocks = (n + 15) / 16;
  auto padded = at::zeros({blocks * 16, k}, w.options());
  padded.narrow(0, 0, n).copy_(w);
  return padded.view({blocks, 16, k}).transpose(1, 2).contiguous();
}

// w [N, K] bfloat16 -> [ceil(N / 16), ceil(K / 2), 16, 2]: 16 columns' weight pairs (k, k + 1) side
// by side at each pair (zeros past N and K).
at::Tensor pack_pairs(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16, "pack_pairs: w must be [N, K] bfloat16");
  const int64_t n = w.size(0), k = w.size(1), blocks = (n + 15) / 16, k2 = (k + 1) / 2;
  auto padded = at::zeros({blocks * 16, k2 * 2}, w.options());
  padded.narrow(0, 0, n).narrow(1, 0, k).copy_(w);
  return padded.view({blocks, 16, k2, 2}).permute({0, 2, 1, 3}).contiguous();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hearth, m) {
  m.def("bf16_dot() -> bool", &bf16_dot);
  m.def("f32_dot() -> bool", &f32_dot);
  m.def("packed_linear(Tensor x, Tensor w, int n, Tensor? bias, Tensor? residual) -> Tensor");
  m.def("pack_columns(Tensor w) -> Tensor");
  m.def("pack_pairs(Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("packed_linear", &packed_linear);
  m.impl("pack_columns", &pack_columns);
  m.impl("pack_pairs", &pack_pairs);
}
