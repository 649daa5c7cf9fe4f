// int8 weight-only products on AVX-512 VNNI (engine.model.packed_linear's `Int8Linear` calls them).
//
// The activations are quantized too, as llama.cpp's Q8 blocks: per 32 along K, one scale
// d = max|x| / 127 and q = round(x / d), so that the weights' bytes meet them in `vpdpbusd` (64
// byte products an instruction) instead of being widened to floats one by one: at one decode row
// the widening, not the memory, bounded torch's int8 kernel (~15 GB/s of this machine's ~27), and
// at 8-32 rows Gemma 3's 262,144-row lm_head was compute-bound in it.
//
// int8: w = q * s_row (q int8, one scale a row: the refit of other GGUF types, the lm_head),
//   y = s_row * (sum_g d_g <q_g + 128, xq_g> - 128 sum_g d_g sum(xq_g)); the + 128 makes the weight
//   the unsigned operand of vpdpbusd.
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

#include <cstdint>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define HEARTH_VNNI 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kGroup = 32;  // weights (and activations) per scale
constexpr int64_t kChunk = 64;  // bytes per vpdpbusd

#ifdef HEARTH_VNNI

inline __m512 bf16x16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Activations [M, K] quantized per block of 32: xq int8 [M, K]; dexp [M, K / 64, 16] floats, the
// scales of a 64-byte chunk's two blocks spread over the lanes vpdpbusd sums them into (0-7, 8-15);
// xqd [M] (sum_g d_g sum(xq_g)).
struct QuantRows {
  std::vector<int8_t> xq;
  std::vector<float> dexp, xqd;
};

QuantRows quantize_rows(const c10::BFloat16* x, int64_t rows, int64_t k, int64_t stride) {
  const int64_t groups = k / kGroup, chunks = k / kChunk;
  QuantRows q;
  q.xq.resize(rows * k);
  q.dexp.resize(rows * chunks * 16);
  q.xqd.resize(rows);
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
        int8_t* out = q.xq.data() + r * k + g * kGroup;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtsepi32_epi8(qa));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm512_cvtsepi32_epi8(qb));
        xqd += d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
        float* lanes = q.dexp.data() + (r * chunks + g / 2) * 16 + (g % 2) * 8;
        for (int l = 0; l < 8; ++l) lanes[l] = d;
      }
      q.xqd[r] = xqd;
    }
  });
  return q;
}

constexpr int64_t kRows = 4;  // weight rows a micro-kernel computes at once: four independent sums
constexpr int64_t kAhead = 8192;  // bytes of weights prefetched ahead of the block being read

// Ask for the cache lines of [p, p + bytes): one core's hardware prefetcher alone kept a weight
// stream at ~half the machine's read bandwidth.
inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}

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

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& qdata, const at::Tensor& scale) {
  TORCH_CHECK(vnni(), "int8_linear: built without AVX-512 VNNI");
  const int64_t n = qdata.size(0), k = qdata.size(1);
  check_x(x, k, "int8_linear");
  TORCH_CHECK(qdata.is_contiguous() && qdata.scalar_type() == at::kChar, "int8_linear: qdata must be int8 [N, K]");
  TORCH_CHECK(scale.is_contiguous() && scale.numel() == n, "int8_linear: scale must be [N]");
  auto y = at::empty({x.size(0), n}, x.options());
#ifdef HEARTH_VNNI
  const auto q = quantize_rows(x.data_ptr<c10::BFloat16>(), x.size(0), k, x.stride(0));
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
  m.def("int8_linear(Tensor x, Tensor qdata, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("int8_linear", &int8_linear);
}
