// Weight-only quantized products on AVX-512 VNNI (engine/model/lean/quant.py wraps them).
//
// As llama.cpp does, the activations are quantized too, to int8 in blocks of 32 along K (one
// scale d = max|x| / 127 per block, q = round(x / d)), so that the weights' bytes meet them in
// `vpdpbusd` (64 byte products a cycle and lane) instead of being widened to floats one by one:
// at one decode row the widening, not the memory, was what bounded torch's int4 and int8 kernels
// (~15 GB/s of this machine's ~27).
//
// int4: w = (q - 8) * s + z per group of 32 weights (q in 0..15; s, z bfloat16: torch's int4
//   convention, the values as they are), stored as
//   qdata [N, K / 2] uint8, 64 weights a 32-byte chunk: byte j holds weight j (low nibble) and
//   weight j + 32 (high nibble), so one load, a mask and a shift give 64 weights in order;
//   scales, zeros [N, K / 32] bfloat16.
//   y = sum_g s_g d_g (<q_g, xq_g> - 8 sum(xq_g)) + sum_g z_g d_g sum(xq_g), the bracket an exact
//   integer: the two terms see the same quantized x, so its rounding does not stop them cancelling.
// int8: w = q * s_row (q int8, one scale a row: the refit of other GGUF types, the lm_head),
//   y = s_row * (sum_g d_g <q_g + 128, xq_g> - 128 sum_g d_g sum(xq_g)); the + 128 makes the weight
//   the unsigned operand of vpdpbusd.
//
// Each output is summed over K in one fixed order that depends on its row alone, whatever the
// number of rows or threads: batch invariance holds.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define HEARTH_VNNI 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kGroup = 32;  // weights (and activations) per scale
constexpr int64_t kChunk = 64;  // bytes per vpdpbusd
constexpr int64_t kSpanGroups = 16;  // int4: groups a span interleaves, one a lane
constexpr int64_t kSpan = kSpanGroups * kGroup;

#ifdef HEARTH_VNNI

inline __m512 bf16x16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __m512 bf16x16_masked(const c10::BFloat16* p, __mmask16 mask) {
  const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Activations [M, K] quantized per block of 32: xq int8 [M, K]; dexp [M, K / 64, 16] floats, the
// scales of a 64-byte chunk's two blocks spread over the lanes vpdpbusd sums them into (0-7, 8-15);
// xsum [M, K / 32] (d * sum(xq) per block, for the int4 zeros), xq8 [M, K / 32] (8 sum(xq), int4)
// and xqd [M] (the sum of xsum over blocks, int8).
struct QuantRows {
  std::vector<int8_t> xq;
  std::vector<float> dexp, xsum, xqd, dg;  // dg [M, K / 32]: the block scales in order (int4)
  std::vector<int32_t> xq8;
};

QuantRows quantize_rows(const c10::BFloat16* x, int64_t rows, int64_t k, int64_t stride, bool spans) {
  const int64_t groups = k / kGroup, chunks = k / kChunk;
  QuantRows q;
  q.xq.resize(rows * k);
  q.dexp.resize(rows * chunks * 16);
  q.xsum.resize(rows * groups);
  q.xqd.resize(rows);
  if (spans) q.dg.resize(rows * groups), q.xq8.resize(rows * groups);
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const c10::BFloat16* xr = x + r * stride;
      float xqd = 0;
      for (int64_t g = 0; g < groups; ++g) {
        const __m512 a = bf16x16(xr + g * kGroup), b = bf16x16(xr + g * kGroup + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        const float d = amax / 127.0f;
        const __m512 inv = _mm512_set1_ps(d > 0 ? 1.0f / d : 0.0f);
        const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv));  // round to nearest even
        const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
        alignas(64) int8_t block[kGroup];
        _mm_storeu_si128(reinterpret_cast<__m128i*>(block), _mm512_cvtsepi32_epi8(qa));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(block + 16), _mm512_cvtsepi32_epi8(qb));
        int8_t* out = q.xq.data() + r * k;
        if (spans) {  // span order (int4): byte c * 4G + 4l + b of a span holds x[32l + 4c + b]
          const int64_t span = g / kSpanGroups, l = g % kSpanGroups;
          const int64_t width = std::min(kSpanGroups, groups - span * kSpanGroups);
          for (int64_t c = 0; c < 8; ++c) std::memcpy(out + span * kSpan + c * 4 * width + 4 * l, block + 4 * c, 4);
          q.dg[r * groups + g] = d;
        } else {
          std::memcpy(out + g * kGroup, block, kGroup);
        }
        // the block's sum as quantized (d * sum(q), llama.cpp's Q8_1 `s`), not as it was: an int4
        // product's two terms nearly cancel, and cancel the activations' rounding only if both see
        // the same x (the exact sum cost SmolLM2 +2 % perplexity)
        const int32_t isum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        const float qsum = d * static_cast<float>(isum);
        q.xsum[r * groups + g] = qsum;
        if (spans) q.xq8[r * groups + g] = 8 * isum;
        xqd += qsum;
        float* lanes = q.dexp.data() + (r * chunks + g / 2) * 16 + (g % 2) * 8;
        for (int l = 0; l < 8; ++l) lanes[l] = d;
      }
      q.xqd[r] = xqd;
    }
  });
  return q;
}

constexpr int64_t kRows = 4;
constexpr int64_t kAhead = 8192;  // bytes of weights prefetched ahead of the block being read

// Ask for the cache lines of [p, p + bytes): one core's hardware prefetcher alone kept a weight
// stream at ~half the machine's read bandwidth.
inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}  // weight rows a micro-kernel computes at once: four independent sums

// int8, R weight rows (already unsigned bytes, q + 128, `wstride` apart) against row r of x; the
// row scales are applied after.
template <int64_t R>
inline void micro8(const QuantRows& q, int64_t r, int64_t k, const uint8_t* w, int64_t wstride, float* out) {
  const int64_t chunks = k / kChunk;
  const int8_t* xr = q.xq.data() + r * k;
  const float* dr = q.dexp.data() + r * chunks * 16;
  __m512 acc[R];
  for (int64_t i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    const __m512i xv = _mm512_loadu_si512(xr + c * kChunk);
    const __m512 d = _mm512_loadu_ps(dr + c * 16);
    for (int64_t i = 0; i < R; ++i) {
      const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(w + i * wstride + c * kChunk), xv);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d, acc[i]);
    }
  }
  for (int64_t i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

// int4, R weight rows against row r of x. A span of 16 groups (512 weights) is laid out so that
// lane l of every vpdpbusd sums group l: each lane's dot product stays an integer over its whole
// group, and a span costs one conversion and one scaling, not one a 64-weight chunk.
template <int64_t R>
inline void micro4(const QuantRows& q, int64_t r, int64_t k, const uint8_t* w, const c10::BFloat16* scales,
                   const c10::BFloat16* zeros, int64_t rowstride, float* out) {
  const int64_t groups = k / kGroup;
  const int8_t* xr = q.xq.data() + r * k;
  const float* dr = q.dg.data() + r * groups;
  const float* xs = q.xsum.data() + r * groups;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R];
  for (int64_t i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < groups; g0 += kSpanGroups) {
    const int64_t width = std::min(kSpanGroups, groups - g0);
    const __mmask64 bytes = width == kSpanGroups ? ~0ULL : (1ULL << (4 * width)) - 1;
    const __mmask16 lanes = static_cast<__mmask16>((1u << width) - 1);
    const int8_t* xspan = xr + g0 * kGroup;
    __m512i xv[8];
    for (int c = 0; c < 8; ++c) xv[c] = _mm512_maskz_loadu_epi8(bytes, xspan + c * 4 * width);
    const __m512 d = _mm512_maskz_loadu_ps(lanes, dr + g0);
    const __m512 sums = _mm512_maskz_loadu_ps(lanes, xs + g0);
    const __m512i q8 = _mm512_maskz_loadu_epi32(lanes, q.xq8.data() + r * groups + g0);
    for (int64_t i = 0; i < R; ++i) {
      const uint8_t* wspan = w + i * rowstride + g0 * (kGroup / 2);
      __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        const __m512i v = _mm512_maskz_loadu_epi8(bytes, wspan + c * 4 * width);
        a = _mm512_dpbusd_epi32(a, _mm512_and_si512(v, low), xv[c]);
        b = _mm512_dpbusd_epi32(b, _mm512_and_si512(_mm512_srli_epi16(v, 4), low), xv[c + 4]);
      }
      const __m512 s = bf16x16_masked(scales + i * (rowstride * 2 / kGroup) + g0, lanes);
      const __m512 z = bf16x16_masked(zeros + i * (rowstride * 2 / kGroup) + g0, lanes);
      const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(a, b), q8);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s, d), acc[i]);
      acc[i] = _mm512_fmadd_ps(z, sums, acc[i]);
    }
  }
  for (int64_t i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

// int4, one weight row against R rows of x from row r0: each span's weights are unpacked once for
// all R. Integer sums are exact in any order, and the float steps are micro4's, in its order: a
// row's bits are the same as there.
template <int64_t R>
inline void micro4_rows(const QuantRows& q, int64_t r0, int64_t k, const uint8_t* w, const c10::BFloat16* scales,
                        const c10::BFloat16* zeros, float* out) {
  const int64_t groups = k / kGroup;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R];
  for (int64_t i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < groups; g0 += kSpanGroups) {
    const int64_t width = std::min(kSpanGroups, groups - g0);
    const __mmask64 bytes = width == kSpanGroups ? ~0ULL : (1ULL << (4 * width)) - 1;
    const __mmask16 lanes = static_cast<__mmask16>((1u << width) - 1);
    const uint8_t* wspan = w + g0 * (kGroup / 2);
    __m512i wv[8];
    for (int c = 0; c < 4; ++c) {
      const __m512i v = _mm512_maskz_loadu_epi8(bytes, wspan + c * 4 * width);
      wv[c] = _mm512_and_si512(v, low);
      wv[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
    const __m512 s = bf16x16_masked(scales + g0, lanes);
    const __m512 z = bf16x16_masked(zeros + g0, lanes);
    for (int64_t i = 0; i < R; ++i) {
      const int8_t* xspan = q.xq.data() + (r0 + i) * k + g0 * kGroup;
      __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        a = _mm512_dpbusd_epi32(a, wv[c], _mm512_maskz_loadu_epi8(bytes, xspan + c * 4 * width));
        b = _mm512_dpbusd_epi32(b, wv[c + 4], _mm512_maskz_loadu_epi8(bytes, xspan + (c + 4) * 4 * width));
      }
      const __m512 d = _mm512_maskz_loadu_ps(lanes, q.dg.data() + (r0 + i) * groups + g0);
      const __m512 sums = _mm512_maskz_loadu_ps(lanes, q.xsum.data() + (r0 + i) * groups + g0);
      const __m512i q8 = _mm512_maskz_loadu_epi32(lanes, q.xq8.data() + (r0 + i) * groups + g0);
      const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(a, b), q8);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s, d), acc[i]);
      acc[i] = _mm512_fmadd_ps(z, sums, acc[i]);
    }
  }
  for (int64_t i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

void int4_rows(const QuantRows& q, int64_t rows, int64_t k, const uint8_t* qdata, const c10::BFloat16* scales,
               const c10::BFloat16* zeros, int64_t n, c10::BFloat16* y) {
  const int64_t groups = k / kGroup, rowstride = k / 2;
  at::parallel_for(0, (n + kRows - 1) / kRows, 4, [&](int64_t begin, int64_t end) {
    float out[kRows];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t j0 = b * kRows, nr = std::min(kRows, n - j0);
      const uint8_t* w = qdata + j0 * rowstride;
      if (j0 * rowstride + kAhead < n * rowstride) {
        prefetch(w + kAhead, std::min(kRows * rowstride, n * rowstride - j0 * rowstride - kAhead));
      }
      if (rows > 1) {  // several rows of x: each weight row's spans unpacked once for kRows of them
        for (int64_t i = 0; i < nr; ++i) {
          const c10::BFloat16* si = scales + (j0 + i) * groups;
          const c10::BFloat16* mi = zeros + (j0 + i) * groups;
          for (int64_t r = 0; r < rows; r += kRows) {
            const int64_t mr = std::min(kRows, rows - r);
            const uint8_t* wi = w + i * rowstride;
            switch (mr) {
              case 4: micro4_rows<4>(q, r, k, wi, si, mi, out); break;
              case 3: micro4_rows<3>(q, r, k, wi, si, mi, out); break;
              case 2: micro4_rows<2>(q, r, k, wi, si, mi, out); break;
              default: micro4_rows<1>(q, r, k, wi, si, mi, out); break;
            }
            for (int64_t t = 0; t < mr; ++t) y[(r + t) * n + j0 + i] = static_cast<c10::BFloat16>(out[t]);
          }
        }
        continue;
      }
      for (int64_t r = 0; r < rows; ++r) {
        if (nr == kRows) {
          micro4<kRows>(q, r, k, w, scales + j0 * groups, zeros + j0 * groups, rowstride, out);
        } else {
          for (int64_t i = 0; i < nr; ++i) {
            micro4<1>(q, r, k, w + i * rowstride, scales + (j0 + i) * groups, zeros + (j0 + i) * groups, rowstride, out + i);
          }
        }
        for (int64_t i = 0; i < nr; ++i) y[r * n + j0 + i] = static_cast<c10::BFloat16>(out[i]);
      }
    }
  });
}

template <typename S>
void int8_rows(const QuantRows& q, int64_t rows, int64_t k, const int8_t* qdata, const S* scale, int64_t n,
               c10::BFloat16* y) {
  at::parallel_for(0, (n + kRows - 1) / kRows, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> wq(kRows * k);  // kRows weight rows as unsigned bytes, q + 128
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    float out[kRows];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t j0 = b * kRows, nr = std::min(kRows, n - j0);
      const uint8_t* w = reinterpret_cast<const uint8_t*>(qdata + j0 * k);
      if (j0 * k + kAhead < n * k) prefetch(w + kAhead, std::min(kRows * k, n * k - j0 * k - kAhead));
      for (int64_t i = 0; i < nr * k; i += kChunk) {
        _mm512_storeu_si512(wq.data() + i, _mm512_xor_si512(_mm512_loadu_si512(w + i), flip));
      }
      for (int64_t r = 0; r < rows; ++r) {
        if (nr == kRows) {
          micro8<kRows>(q, r, k, wq.data(), k, out);
        } else {
          for (int64_t i = 0; i < nr; ++i) micro8<1>(q, r, k, wq.data() + i * k, k, out + i);
        }
        for (int64_t i = 0; i < nr; ++i) {
          y[r * n + j0 + i] = static_cast<c10::BFloat16>(static_cast<float>(scale[j0 + i]) * (out[i] - 128.0f * q.xqd[r]));
        }
      }
    }
  });
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

// Hearth's int4 layout of codes q [N, K] (uint8 0..15, K a multiple of 32): per span of 16 groups
// (the last may be narrower, G groups), 4 blocks of 4G bytes; byte c * 4G + 4l + b holds
// q[32l + 4c + b] (low nibble) and q[32l + 4(c + 4) + b] (high nibble).
at::Tensor pack_int4(const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 2 && q.size(1) % kGroup == 0 && q.scalar_type() == at::kByte, "pack_int4: q must be uint8 [N, K]");
  auto src = q.contiguous();
  const int64_t n = src.size(0), k = src.size(1), groups = k / kGroup;
  auto out = at::empty({n, k / 2}, src.options());
  const uint8_t* qs = src.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t g0 = 0; g0 < groups; g0 += kSpanGroups) {
      const int64_t width = std::min(kSpanGroups, groups - g0);
      const uint8_t* s = qs + j * k + g0 * kGroup;
      uint8_t* d = dst + j * (k / 2) + g0 * (kGroup / 2);
      for (int64_t c = 0; c < 4; ++c)
        for (int64_t l = 0; l < width; ++l)
          for (int64_t b = 0; b < 4; ++b)
            d[c * 4 * width + 4 * l + b] =
                static_cast<uint8_t>((s[32 * l + 4 * c + b] & 0x0F) | ((s[32 * l + 4 * (c + 4) + b] & 0x0F) << 4));
    }
  }
  return out;
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scales, const at::Tensor& zeros) {
  TORCH_CHECK(vnni(), "int4_linear: built without AVX-512 VNNI");
  const int64_t n = qdata.size(0), k = qdata.size(1) * 2;
  check_x(x, k, "int4_linear");
  TORCH_CHECK(qdata.is_contiguous() && qdata.scalar_type() == at::kByte, "int4_linear: qdata must be uint8 [N, K / 2]");
  TORCH_CHECK(scales.is_contiguous() && zeros.is_contiguous() && scales.scalar_type() == at::kBFloat16 &&
                  zeros.scalar_type() == at::kBFloat16 && scales.numel() == n * (k / kGroup) && zeros.numel() == n * (k / kGroup),
              "int4_linear: scales and zeros must be bfloat16 [N, K / 32]");
  auto y = at::empty({x.size(0), n}, x.options());
#ifdef HEARTH_VNNI
  const auto q = quantize_rows(x.data_ptr<c10::BFloat16>(), x.size(0), k, x.stride(0), true);
  int4_rows(q, x.size(0), k, qdata.data_ptr<uint8_t>(), scales.data_ptr<c10::BFloat16>(), zeros.data_ptr<c10::BFloat16>(),
            n, y.data_ptr<c10::BFloat16>());
#endif
  return y;
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale) {
  TORCH_CHECK(vnni(), "int8_linear: built without AVX-512 VNNI");
  const int64_t n = qdata.size(0), k = qdata.size(1);
  check_x(x, k, "int8_linear");
  TORCH_CHECK(qdata.is_contiguous() && qdata.scalar_type() == at::kChar, "int8_linear: qdata must be int8 [N, K]");
  TORCH_CHECK(scale.is_contiguous() && scale.numel() == n, "int8_linear: scale must be [N]");
  auto y = at::empty({x.size(0), n}, x.options());
#ifdef HEARTH_VNNI
  const auto q = quantize_rows(x.data_ptr<c10::BFloat16>(), x.size(0), k, x.stride(0), false);
  if (scale.scalar_type() == at::kFloat) {
    int8_rows(q, x.size(0), k, qdata.data_ptr<int8_t>(), scale.data_ptr<float>(), n, y.data_ptr<c10::BFloat16>());
  } else {
    TORCH_CHECK(scale.scalar_type() == at::kBFloat16, "int8_linear: scale must be float32 or bfloat16");
    int8_rows(q, x.size(0), k, qdata.data_ptr<int8_t>(), scale.data_ptr<c10::BFloat16>(), n, y.data_ptr<c10::BFloat16>());
  }
#endif
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hearth, m) {
  m.def("vnni() -> bool", &vnni);
  m.def("pack_int4(Tensor q) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor qdata, Tensor scales, Tensor zeros) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor qdata, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("pack_int4", &pack_int4);
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
}
