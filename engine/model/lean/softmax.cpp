// Attention's softmax written out on float32 (engine/model/attention.py: CPU float32, where SDPA's
// flash kernel would move a row's bits with its key length): softmax(scores * scale + bias) over
// the last dim, in place, in one op where aten took four (mul_, add_, softmax and its passes).
//
// A row's result depends on its own scores alone, and not on how many masked keys pad it: its
// maximum is exact, its sum of exponentials is added up in 16 lanes by key position (a masked key
// adds an exact 0 to its lane), then reduced in a fixed order; masked keys come out 0. So a query
// row gets the same bits decoded or prefilled, and whatever key length its step pads to.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>
#include "simd.h"

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// row r's values x [L] (scaled and biased in place on the first pass), its bias b [L]
void softmax_row(float* x, const float* b, int64_t n, float scale) {
  float lanes[16];
#ifdef __AVX512F__
  const __m512 s = _mm512_set1_ps(scale);
  const __m512 minus_inf = _mm512_set1_ps(kMinusInf);
  __m512 vmax = minus_inf;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + j), s), _mm512_loadu_ps(b + j));
    _mm512_storeu_ps(x + j, v);
    vmax = _mm512_max_ps(vmax, v);
  }
  float m = _mm512_reduce_max_ps(vmax);
#else
  float m = kMinusInf;
  int64_t j = 0;
#endif
  for (; j < n; ++j) {
    x[j] = x[j] * scale + b[j];
    m = std::max(m, x[j]);
  }
  if (m == kMinusInf) {  // every key masked (a padding row): zeros, not NaN
    std::fill(x, x + n, 0.0f);
    return;
  }
  for (float& l : lanes) l = 0.0f;
  j = 0;
#ifdef __AVX512F__
  const __m512 vm = _mm512_set1_ps(m);
  __m512 vsum = _mm512_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    const __m512 v = _mm512_loadu_ps(x + j);
    const __mmask16 live = _mm512_cmp_ps_mask(v, minus_inf, _CMP_NEQ_OQ);
    const __m512 e = _mm512_maskz_mov_ps(live, hearth::simd::exp16(_mm512_sub_ps(v, vm)));
    _mm512_storeu_ps(x + j, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  _mm512_storeu_ps(lanes, vsum);
#endif
  for (; j < n; ++j) {
    x[j] = x[j] == kMinusInf ? 0.0f : std::exp(x[j] - m);
    lanes[j % 16] += x[j];
  }
  for (int w = 8; w >= 1; w /= 2) {  // a fixed tree: lane l + w onto lane l
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  }
  const float inv = 1.0f / lanes[0];
  j = 0;
#ifdef __AVX512F__
  const __m512 vinv = _mm512_set1_ps(inv);
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(x + j, _mm512_mul_ps(_mm512_loadu_ps(x + j), vinv));
#endif
  for (; j < n; ++j) x[j] *= inv;
}

// scores [..., L] contiguous float32; bias float32 broadcastable to them, its last dim L
at::Tensor scaled_softmax_(at::Tensor scores, const at::Tensor& bias, double scale) {
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == at::kFloat && scores.is_contiguous() && scores.dim() >= 1,
              "scaled_softmax_: scores must be contiguous float32 on the CPU");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.dim() >= 1 && bias.size(-1) == scores.size(-1),
              "scaled_softmax_: bias must be float32 with the scores' last dim");
  const auto b = bias.expand_as(scores);
  TORCH_CHECK(b.stride(-1) == 1, "scaled_softmax_: bias must be contiguous along its last dim");
  const int64_t n = scores.size(-1), dims = scores.dim() - 1;
  if (n == 0 || scores.numel() == 0) return scores;
  const int64_t rows = scores.numel() / n;
  std::vector<int64_t> sizes(scores.sizes().begin(), scores.sizes().end() - 1);
  std::vector<int64_t> strides(b.strides().begin(), b.strides().end() - 1);
  float* x = scores.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t offset = 0, rest = r;
      for (int64_t d = dims - 1; d >= 0; --d) {
        offset += (rest % sizes[d]) * strides[d];
        rest /= sizes[d];
      }
      softmax_row(x + r * n, bp + offset, n, s);
    }
  });
  return scores;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hearth, m) {
  m.def("scaled_softmax_(Tensor(a!) scores, Tensor bias, float scale) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("scaled_softmax_", &scaled_softmax_);
}
