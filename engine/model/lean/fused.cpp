// Fused CPU kernels of the lean forward (engine/model/lean/fused.py builds and loads them).
//
// Each replaces a chain of small aten ops whose cost at one decode row is their dispatch, not
// their arithmetic: RMSNorm (~10 ops: upcast, pow, mean, add, rsqrt, mul, downcast, mul), the
// rotary embedding of q and k (slices, neg, cat, mul, addcmul) and a gated MLP's activation and
// product, on bfloat16 or float32 rows. They round where transformers' modules round (a bfloat16
// result wherever those store one); what differs is the order a row's sum of squares is added up, and exp's last bits.
// A row's result depends on that row alone: batch invariance holds. Beside them, `argmax_rows`:
// the engine's greedy pick and finite check over a step's logits, in one pass.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include "simd.h"

namespace {

#ifdef __AVX512F__
using hearth::simd::exp16;
using hearth::simd::load_bf16;
using hearth::simd::round_bf16;
using hearth::simd::widen;
#endif

constexpr int kLanes = 16;  // partial sums: a fixed summation order that the compiler vectorizes

template <typename T>
inline float sum_of_squares(const T* x, int64_t n) {
  float acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = static_cast<float>(x[i + l]);
      acc[l] += v * v;
    }
  }
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    acc[i % kLanes] += v * v;
  }
  float total = 0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// y = round(x * r) * w (Llama: transformers' `weight * hidden.to(dtype)`), or, with a float32
// weight (Gemma's 1 + w, computed in float32), y = round(x * r * w).
template <typename T, typename W>
void rms_rows(const T* x, const W* w, T* y, int64_t rows, int64_t n, int64_t stride, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * stride;
      T* yr = y + r * n;
      const float inv = 1.0f / std::sqrt(sum_of_squares(xr, n) / static_cast<float>(n) + eps);
      for (int64_t i = 0; i < n; ++i) {
        const float v = static_cast<float>(xr[i]) * inv;
        if constexpr (std::is_same_v<W, float>) {
          yr[i] = static_cast<T>(v * w[i]);
        } else {
          yr[i] = static_cast<T>(static_cast<float>(static_cast<T>(v)) * static_cast<float>(w[i]));
        }
      }
    }
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1, "rms_norm: x must be [M, N] rows on the CPU");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous(), "rms_norm: weight must be [N]");
  const int64_t rows = x.size(0), n = x.size(1);
  auto y = at::empty({rows, n}, x.options());
  const float e = static_cast<float>(eps);
  if (x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16) {
    rms_rows(x.data_ptr<c10::BFloat16>(), weight.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), rows, n, x.stride(0), e);
  } else if (x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kFloat) {
    rms_rows(x.data_ptr<c10::BFloat16>(), weight.data_ptr<float>(), y.data_ptr<c10::BFloat16>(), rows, n, x.stride(0), e);
  } else if (x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat) {
    rms_rows(x.data_ptr<float>(), weight.data_ptr<float>(), y.data_ptr<float>(), rows, n, x.stride(0), e);
  } else {
    TORCH_CHECK(false, "rms_norm: takes bfloat16 rows with a bfloat16 or float32 weight, or float32 rows and weight");
  }
  return y;
}

// Rotary embedding, rotate-half convention, of the first `heads` heads of each row of qkv
// [T, >= heads * D] (q and k heads, in place of transformers' rotate_half and addcmul) with
// cos/sin [T, R] (R <= D rotated dims; the rest of each head is copied as it is):
// out = round(round(x * cos) + rotated * sin), as `addcmul(x * cos, rotated, sin)` rounds.
template <typename T>
void rope_rows(const T* x, const T* c, const T* s, T* y, int64_t t, int64_t heads, int64_t d, int64_t r, int64_t stride) {
  const int64_t half = r / 2;
  at::parallel_for(0, t * heads, 64, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t row = job / heads, head = job % heads;
      const T* xh = x + row * stride + head * d;
      const T* cr = c + row * r;
      const T* sr = s + row * r;
      T* yh = y + job * d;
      for (int64_t i = 0; i < r; ++i) {
        const float rotated = i < half ? -static_cast<float>(xh[i + half]) : static_cast<float>(xh[i - half]);
        const float m = static_cast<float>(static_cast<T>(static_cast<float>(xh[i]) * static_cast<float>(cr[i])));
        yh[i] = static_cast<T>(m + rotated * static_cast<float>(sr[i]));
      }
      for (int64_t i = r; i < d; ++i) yh[i] = xh[i];
    }
  });
}

at::Tensor rope(const at::Tensor& qkv, int64_t heads, int64_t head_dim, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.dim() == 2 && qkv.stride(1) == 1, "rope: qkv must be [T, N] rows on the CPU");
  const auto dtype = qkv.scalar_type();
  TORCH_CHECK((dtype == at::kBFloat16 || dtype == at::kFloat) && cos.scalar_type() == dtype && sin.scalar_type() == dtype,
              "rope: takes bfloat16 or float32 inputs, all of one dtype");
  TORCH_CHECK(cos.dim() == 2 && cos.is_contiguous() && sin.is_contiguous() && cos.sizes() == sin.sizes(), "rope: cos/sin must be [T, R]");
  const int64_t t = qkv.size(0), r = cos.size(1), d = head_dim;
  TORCH_CHECK(cos.size(0) == t && r <= d && r % 2 == 0 && qkv.size(1) >= heads * d, "rope: shapes do not agree");
  auto out = at::empty({t, heads, d}, qkv.options());
  if (dtype == at::kFloat) {
    rope_rows(qkv.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), out.data_ptr<float>(), t, heads, d, r, qkv.stride(0));
  } else {
    rope_rows(qkv.data_ptr<c10::BFloat16>(), cos.data_ptr<c10::BFloat16>(), sin.data_ptr<c10::BFloat16>(),
              out.data_ptr<c10::BFloat16>(), t, heads, d, r, qkv.stride(0));
  }
  return out;
}

// A gated MLP's middle, gate and up computed as one product gu [M, 2I] (quantized kernels and
// Hearth's own have no post-ops to fuse them into): y = round(round(act(gate)) * up), as
// `act(gate) * up` rounds (in float32 no rounding), with act SiLU (x / (1 + e^-x)) or GELU's tanh
// approximation.
#ifdef __AVX512F__
// act(v) for 16 floats (see act_mul below)
template <bool kSilu>
inline __m512 activation16(__m512 v) {
  if constexpr (kSilu) {
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
  } else {  // 0.5 v (1 + tanh(y)) = v / (1 + e^-2y): SiLU's form, without 1 + tanh's cancellation
    const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    const __m512 y = _mm512_mul_ps(_mm512_set1_ps(static_cast<float>(-M_SQRT2 * M_2_SQRTPI)),
                                   _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(0.044715f), v3)));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(y)));
  }
}

// 16 outputs of act_mul (see below)
template <bool kSilu>
inline void act_mul16(const c10::BFloat16* g, const c10::BFloat16* u, c10::BFloat16* o) {
  const __m512 a = activation16<kSilu>(load_bf16(g));
  const __m512 y = _mm512_mul_ps(widen(round_bf16(a)), load_bf16(u));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), round_bf16(y));
}

template <bool kSilu>
inline void act_mul16(const float* g, const float* u, float* o) {
  _mm512_storeu_ps(o, _mm512_mul_ps(activation16<kSilu>(_mm512_loadu_ps(g)), _mm512_loadu_ps(u)));
}
#endif

template <bool kSilu>
inline float activation(float v) {
  if constexpr (kSilu) {
    return v / (1.0f + std::exp(-v));
  } else {  // as act_mul16: v / (1 + e^-2y)
    const float y = static_cast<float>(-M_SQRT2 * M_2_SQRTPI) * (v + 0.044715f * (v * v * v));
    return v / (1.0f + std::exp(y));
  }
}

template <bool kSilu, typename T>
void act_mul_rows(const T* x, T* out, int64_t rows, int64_t inner) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* g = x + r * 2 * inner;
      const T* u = g + inner;
      T* o = out + r * inner;
      int64_t i = 0;
#ifdef __AVX512F__
      for (; i + 16 <= inner; i += 16) act_mul16<kSilu>(g + i, u + i, o + i);
#endif
      for (; i < inner; ++i) {
        const float a = activation<kSilu>(static_cast<float>(g[i]));
        o[i] = static_cast<T>(static_cast<float>(static_cast<T>(a)) * static_cast<float>(u[i]));
      }
    }
  });
}

template <typename T>
void act_mul_typed(const at::Tensor& gu, at::Tensor& y, bool silu) {
  const int64_t rows = gu.size(0), inner = gu.size(1) / 2;
  if (silu) {
    act_mul_rows<true>(gu.data_ptr<T>(), y.data_ptr<T>(), rows, inner);
  } else {
    act_mul_rows<false>(gu.data_ptr<T>(), y.data_ptr<T>(), rows, inner);
  }
}

at::Tensor act_mul(const at::Tensor& gu, bool silu) {
  TORCH_CHECK(gu.device().is_cpu() && gu.dim() == 2 && gu.is_contiguous() && gu.size(1) % 2 == 0,
              "act_mul: gu must be contiguous [M, 2I] rows on the CPU");
  TORCH_CHECK(gu.scalar_type() == at::kBFloat16 || gu.scalar_type() == at::kFloat, "act_mul: takes bfloat16 or float32 rows");
  auto y = at::empty({gu.size(0), gu.size(1) / 2}, gu.options());
  if (gu.scalar_type() == at::kFloat) {
    act_mul_typed<float>(gu, y, silu);
  } else {
    act_mul_typed<c10::BFloat16>(gu, y, silu);
  }
  return y;
}

// Per row of float32 logits [K, V]: the index of its greatest value (the first, as torch.argmax
// picks) and whether every value is finite, in one pass (torch's argmax and aminmax take ~8 ms each
// over Gemma 3's [32, 262,144] on 2 cores; this is the read of it).
std::tuple<at::Tensor, at::Tensor> argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "argmax_rows: x must be contiguous float32 [K, V] on the CPU");
  const int64_t rows = x.size(0), v = x.size(1);
  TORCH_CHECK(v > 0, "argmax_rows: empty rows");
  auto ids = at::empty({rows}, x.options().dtype(at::kLong));
  auto finite = at::empty({rows}, x.options().dtype(at::kBool));
  const float* data = x.data_ptr<float>();
  int64_t* id = ids.data_ptr<int64_t>();
  bool* ok = finite.data_ptr<bool>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* p = data + r * v;
      float best = p[0];
      int64_t at = 0, i = 0;
      bool bad = false;
#ifdef __AVX512F__
      if (v >= 16) {
        __m512 top = _mm512_loadu_ps(p);
        __m512i where = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512i index = where;
        __mmask16 nonfinite = _mm512_cmp_ps_mask(_mm512_sub_ps(top, top), _mm512_setzero_ps(), _CMP_NEQ_UQ);
        for (i = 16; i + 16 <= v; i += 16) {
          const __m512 a = _mm512_loadu_ps(p + i);
          index = _mm512_add_epi32(index, _mm512_set1_epi32(16));
          nonfinite |= _mm512_cmp_ps_mask(_mm512_sub_ps(a, a), _mm512_setzero_ps(), _CMP_NEQ_UQ);
          const __mmask16 gt = _mm512_cmp_ps_mask(a, top, _CMP_GT_OQ);  // strictly: each lane keeps its first
          top = _mm512_mask_mov_ps(top, gt, a);
          where = _mm512_mask_mov_epi32(where, gt, index);
        }
        bad = nonfinite != 0;
        alignas(64) float tv[16];
        alignas(64) int32_t tw[16];
        _mm512_store_ps(tv, top);
        _mm512_store_si512(tw, where);
        best = tv[0];
        at = tw[0];
        for (int l = 1; l < 16; ++l) {  // the greatest lane; among equal ones, the first index
          if (tv[l] > best || (tv[l] == best && tw[l] < at)) {
            best = tv[l];
            at = tw[l];
          }
        }
      }
#endif
      for (; i < v; ++i) {
        bad |= !std::isfinite(p[i]);
        if (p[i] > best) {
          best = p[i];
          at = i;
        }
      }
      id[r] = at;
      ok[r] = !bad && std::isfinite(best);
    }
  });
  return {ids, finite};
}

}  // namespace

TORCH_LIBRARY(hearth, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rope(Tensor qkv, int heads, int head_dim, Tensor cos, Tensor sin) -> Tensor");
  m.def("act_mul(Tensor gu, bool silu) -> Tensor");
  m.def("argmax_rows(Tensor x) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("rope", &rope);
  m.impl("act_mul", &act_mul);
  m.impl("argmax_rows", &argmax_rows);
}
