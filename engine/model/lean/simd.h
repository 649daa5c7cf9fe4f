// SIMD helpers the kernels share (AVX-512F): bfloat16 lanes widened and rounded, 16 sums
// reduced at once, e^x of 16 floats.

#pragma once

#ifdef __AVX512F__
#include <c10/util/BFloat16.h>
#include <immintrin.h>

namespace hearth::simd {

// 16 bfloat16 (the high halves of floats) as floats
inline __m512 widen(__m256i bf16) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16)); }

inline __m512 load_bf16(const c10::BFloat16* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

// float -> bfloat16, rounded to nearest even as c10::BFloat16 rounds (no NaNs here)
inline __m256i round_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

// The 16 sums of acc[0..15] as lanes 0..15, by a transposing tree (4 levels of two permutes and
// an add), 45 ops where 16 separate reductions take ~160. Every sum is added up in the same tree
// whichever lane it lands in (each level adds lane l to lane l + w/2 of its own partials), so a
// sum's bits do not depend on the tile it was computed in.
__attribute__((always_inline)) inline __m512 reduce16(const __m512* acc) {
  const __m512i lo1 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i hi1 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const __m512i lo2 = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i hi2 = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  const __m512i lo3 = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
  const __m512i hi3 = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  const __m512i lo4 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i hi4 = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  __m512 s[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)
    s[i] = _mm512_add_ps(_mm512_permutex2var_ps(acc[2 * i], lo1, acc[2 * i + 1]),
                         _mm512_permutex2var_ps(acc[2 * i], hi1, acc[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    c[i] = _mm512_add_ps(_mm512_permutex2var_ps(s[2 * i], lo2, s[2 * i + 1]), _mm512_permutex2var_ps(s[2 * i], hi2, s[2 * i + 1]));
  for (int i = 0; i < 2; ++i)
    d[i] = _mm512_add_ps(_mm512_permutex2var_ps(c[2 * i], lo3, c[2 * i + 1]), _mm512_permutex2var_ps(c[2 * i], hi3, c[2 * i + 1]));
  return _mm512_add_ps(_mm512_permutex2var_ps(d[0], lo4, d[1]), _mm512_permutex2var_ps(d[0], hi4, d[1]));
}

// e^x for 16 floats: Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial in r),
// within ~1 ulp of std::exp; x is clamped to +-88.38 (e^x overflows to inf just past it).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.3762626647949f)), _mm512_set1_ps(88.3762626647949f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

}  // namespace hearth::simd
#endif
