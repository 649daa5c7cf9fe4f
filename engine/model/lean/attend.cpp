// Attention on float32 (engine/model/attention.py: CPU float32, where SDPA's flash kernel would
// move a row's bits with its key length): softmax(q k^T * scale + bias) v in one op, for decode
// rows and prefill chunks alike, where aten took a gather of the keys and values out of the cache,
// a product, a softmax and a product per key block, each through memory. It reads the cache in
// place through the block tables (or keys and values already contiguous); a tile of 4 query rows
// shares every key and value it loads. On this project's 2-core AMD EPYC, a 1,658-token prefill's
// attention went from ~0.85 s to ~0.35 s, and the gathers (a third of a 32-row float32 decode
// step) are gone.
//
// A query row's result depends on its own query, the keys and values it may see, and nothing else:
// - its score with key j is one multiply-add chain over the head dim, in order (keys sit in the
//   lanes: a (row, key head)'s keys are transposed once, into a buffer), then * scale + bias;
// - it reads only the keys from its first to its last unmasked one (its bias says which: one span,
//   as causal masks and sliding windows make), so the
//   keys a step pads it with, and the rows beside it, are never added in (a masked key's stale
//   NaN neither);
// - its maximum is exact; its sum of exponentials is added up in 16 lanes by key position and
//   reduced in a fixed order; each output element is one multiply-add chain over its keys, in
//   order, scaled by 1 / sum at the end.
// So a row gets the same bits decoded or prefilled, in any tile, whatever its step pads it to.
// A row that may see no key (a padding row) comes out 0.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>
#include "simd.h"

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kRows = 4;   // query rows a tile: the rows share every key and value they load
constexpr int64_t kLanes = 16;  // keys a vector
constexpr int64_t kMaxHeadDim = 512;

#ifdef __AVX512F__

// The first and one past the last finite bias of a row of n (a multiple of 16) keys, whose finite
// biases are one span (a causal mask, a sliding window's): the scan reads up to the span's end, not
// the padding after it. lo == hi: it sees no key.
void row_range(const float* b, int64_t n, int64_t* lo, int64_t* hi) {
  const __m512 minus_inf = _mm512_set1_ps(kMinusInf);
  int64_t a = 0;
  for (; a < n; a += kLanes) {
    const __mmask16 live = _mm512_cmp_ps_mask(_mm512_loadu_ps(b + a), minus_inf, _CMP_NEQ_OQ);
    if (live) {
      a += __builtin_ctz(live);
      break;
    }
  }
  if (a >= n) {
    *lo = *hi = 0;
    return;
  }
  int64_t z = n;
  for (int64_t j = a / kLanes * kLanes; j < n; j += kLanes) {
    __mmask16 dead = _mm512_cmp_ps_mask(_mm512_loadu_ps(b + j), minus_inf, _CMP_EQ_OQ);
    if (j < a) dead &= static_cast<__mmask16>(~((1U << (a - j)) - 1));  // the lanes before the span
    if (dead) {
      z = j + __builtin_ctz(dead);
      break;
    }
  }
  *lo = a;
  *hi = z;
}

// 16 keys' or values' elements as floats (bfloat16 widened exactly)
__attribute__((always_inline)) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((always_inline)) inline __m512 load16(const c10::BFloat16* p) { return hearth::simd::load_bf16(p); }

// n (a multiple of 16) floats to a row of the output, rounded as c10::BFloat16 rounds where it is bfloat16
inline void store_row(const float* x, float* out, int64_t n) { std::copy(x, x + n, out); }
inline void store_row(const float* x, c10::BFloat16* out, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), hearth::simd::round_bf16(_mm512_loadu_ps(x + i)));
}

// A vector the compiler must keep in a register: loaded once, not folded again into each of the
// kRows multiply-adds that read it (which made the loads, not the multiply-adds, the limit).
__attribute__((always_inline)) inline __m512 in_register(__m512 x) {
  asm("" : "+v"(x));
  return x;
}

// scores s[r][j..j + 16 NK) of a tile's kRows query rows q (row stride qs) against kt [D, lp]
template <int NK>
__attribute__((always_inline)) inline void scores_block(const float* q, int64_t qs, const float* kt, int64_t lp,
                                                        int64_t d_size, int64_t j, float* s) {
  __m512 acc[kRows][NK];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NK; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < d_size; ++d) {
    const float* k = kt + d * lp + j;
    __m512 kv[NK];
    for (int c = 0; c < NK; ++c) kv[c] = in_register(_mm512_loadu_ps(k + c * kLanes));
    for (int r = 0; r < kRows; ++r) {
      const __m512 x = _mm512_set1_ps(q[r * qs + d]);
      for (int c = 0; c < NK; ++c) acc[r][c] = _mm512_fmadd_ps(x, kv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NK; ++c) _mm512_storeu_ps(s + r * lp + j + c * kLanes, acc[r][c]);
}

// out[r][c0..c0 + 16 NC) = (sum over the row's keys i in order of p[r][i] v[i]) * inv[r]. Keys
// every row sees run unchecked; at the edges of the rows' ranges each row takes only its own.
template <int NC, typename T>
__attribute__((always_inline)) inline void values_block(const T* const* v, int64_t d_size, int64_t c0, const float* p,
                                                        int64_t lp, const int64_t* lo, const int64_t* hi, int64_t tlo,
                                                        int64_t thi, const float* inv, float* out) {
  int64_t flo = tlo, fhi = thi;  // the keys all kRows rows see
  for (int r = 0; r < kRows; ++r) {
    flo = std::max(flo, lo[r]);
    fhi = std::min(fhi, hi[r]);
  }
  if (fhi < flo) fhi = flo = thi;
  __m512 acc[kRows][NC];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
  auto checked = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      __m512 vv[NC];
      for (int c = 0; c < NC; ++c) vv[c] = in_register(load16(v[i / kLanes] + (i % kLanes) * d_size + c0 + c * kLanes));
      for (int r = 0; r < kRows; ++r) {
        if (i < lo[r] || i >= hi[r]) continue;
        const __m512 w = _mm512_set1_ps(p[r * lp + i]);
        for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_fmadd_ps(w, vv[c], acc[r][c]);
      }
    }
  };
  checked(tlo, flo);
  for (int64_t i = flo; i < fhi; ++i) {
    __m512 vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = in_register(load16(v[i / kLanes] + (i % kLanes) * d_size + c0 + c * kLanes));
    for (int r = 0; r < kRows; ++r) {
      const __m512 w = _mm512_set1_ps(p[r * lp + i]);
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_fmadd_ps(w, vv[c], acc[r][c]);
    }
  }
  checked(fhi, thi);
  for (int r = 0; r < kRows; ++r) {
    const __m512 w = _mm512_set1_ps(inv[r]);
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(out + r * d_size + c * kLanes, _mm512_mul_ps(acc[r][c], w));
  }
}

// One tile of up to kRows query rows against one batch's n keys: out [rows, D] (row stride os).
// kt: that batch's keys transposed [D, lp]; v: its values, a pointer per 16 keys ([16, D] each);
// bias rows (row stride bs); s: scratch [kRows, lp]; o: scratch [kRows, D].
template <typename T>
void tile(const T* q, int64_t qs, int64_t rows, int64_t n, const float* kt, int64_t lp, const T* const* v, int64_t d_size,
          const float* bias, int64_t bs, float scale, float* s, float* o, T* out, int64_t os) {
  int64_t lo[kRows], hi[kRows];
  int64_t tlo = n, thi = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    lo[r] = hi[r] = 0;
    if (r < rows) row_range(bias + r * bs, n, &lo[r], &hi[r]);
    if (lo[r] < hi[r]) {
      tlo = std::min(tlo, lo[r]);
      thi = std::max(thi, hi[r]);
    }
  }
  if (tlo >= thi) {  // no row sees a key
    for (int64_t r = 0; r < rows; ++r) std::fill(out + r * os, out + r * os + d_size, T(0.0f));
    return;
  }
  // the tile's queries as floats; the missing rows of an odd row count's last tile are zeros
  float qf[kRows * kMaxHeadDim];
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t d = 0; d < d_size; ++d) qf[r * d_size + d] = r < rows ? static_cast<float>(q[r * qs + d]) : 0.0f;
  const int64_t j0 = tlo / kLanes * kLanes, j1 = (thi + kLanes - 1) / kLanes * kLanes;
  // 1. scores, keys 64 at a time, then 16
  int64_t j = j0;
  for (; j + 4 * kLanes <= j1; j += 4 * kLanes) scores_block<4>(qf, d_size, kt, lp, d_size, j, s);
  for (; j < j1; j += kLanes) scores_block<1>(qf, d_size, kt, lp, d_size, j, s);
  // 2. per row: * scale + bias (a masked key stays -inf whatever its score), max, e^(x - max), sum
  const __m512 vs = _mm512_set1_ps(scale), minus_inf = _mm512_set1_ps(kMinusInf);
  float inv[kRows];
  for (int64_t r = 0; r < kRows; ++r) {
    inv[r] = 0.0f;
    if (lo[r] >= hi[r]) continue;
    float* x = s + r * lp;
    const float* b = bias + r * bs;
    const int64_t a = lo[r] / kLanes * kLanes, z = (hi[r] + kLanes - 1) / kLanes * kLanes;
    __m512 vmax = minus_inf;
    for (int64_t i = a; i < z; i += kLanes) {
      const __m512 bb = _mm512_loadu_ps(b + i);
      const __mmask16 live = _mm512_cmp_ps_mask(bb, minus_inf, _CMP_NEQ_OQ);
      const __m512 y = _mm512_mask_add_ps(minus_inf, live, _mm512_mul_ps(_mm512_loadu_ps(x + i), vs), bb);
      _mm512_storeu_ps(x + i, y);
      vmax = _mm512_max_ps(vmax, y);
    }
    const __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t i = a; i < z; i += kLanes) {
      const __m512 y = _mm512_loadu_ps(x + i);
      const __mmask16 live = _mm512_cmp_ps_mask(y, minus_inf, _CMP_NEQ_OQ);
      const __m512 e = _mm512_maskz_mov_ps(live, hearth::simd::exp16(_mm512_sub_ps(y, vm)));
      _mm512_storeu_ps(x + i, e);
      vsum = _mm512_add_ps(vsum, e);
    }
    float lanes[kLanes];
    _mm512_storeu_ps(lanes, vsum);
    for (int w = 8; w >= 1; w /= 2)  // a fixed tree: lane l + w onto lane l
      for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
    inv[r] = 1.0f / lanes[0];
  }
  // 3. out = (e v) / sum, 64 columns at a time, then 16
  int64_t c0 = 0;
  for (; c0 + 4 * kLanes <= d_size; c0 += 4 * kLanes) {
    values_block<4>(v, d_size, c0, s, lp, lo, hi, tlo, thi, inv, o);
    for (int64_t r = 0; r < rows; ++r) store_row(o + r * d_size, out + r * os + c0, 4 * kLanes);
  }
  for (; c0 < d_size; c0 += kLanes) {
    values_block<1>(v, d_size, c0, s, lp, lo, hi, tlo, thi, inv, o);
    for (int64_t r = 0; r < rows; ++r) store_row(o + r * d_size, out + r * os + c0, kLanes);
  }
}

// a 16 x 16 block: src rows (stride ss) -> dst rows (stride ds), transposed
template <typename T>
inline void transpose16(const T* src, int64_t ss, float* dst, int64_t ds) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = load16(src + i * ss);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0x88);
      t[8 * h + i + 4] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ds, r[i]);
}

// keys j0 <= j < j1 (multiples of 16) -> columns of kt [D, lp]; k: a pointer per 16 keys ([16, D] each)
template <typename T>
void transpose(const T* const* k, int64_t d_size, float* kt, int64_t lp, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += kLanes)
    for (int64_t d = 0; d < d_size; d += kLanes) transpose16(k[j / kLanes] + d, d_size, kt + d * lp + j, lp);
}

#endif

// A buffer of at least n floats kept by this thread across calls (uninitialized: a fresh zeroed
// one a call cost more than a decode step's attention, its pages mapped and faulted in again).
float* buffer(int which, int64_t n) {
  thread_local std::vector<float> kept[3];
  auto& b = kept[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

struct Shape {
  std::vector<int64_t> lead;  // q's leading dims
  int64_t m, d, n;            // query rows, head dim, keys
  int64_t kv_heads, head_stride, block_stride;  // the cache's, where paged
};

// See `attend`. T: the queries', keys', values' and output's element type.
template <typename T>
void run(const Shape& sh, const T* qp, const T* kp, const T* vp, const int64_t* tp, const at::Tensor& b, float s, T* op) {
#ifdef __AVX512F__
  const int64_t dims = static_cast<int64_t>(sh.lead.size()), m = sh.m, d_size = sh.d, n = sh.n;
  int64_t batches = 1;
  for (int64_t x : sh.lead) batches *= x;
  if (batches == 0 || m == 0) return;
  // kt's row stride: one vector past the keys, so its D rows do not fall on the same cache sets (a
  // power-of-two stride made the transposition 4x slower)
  const int64_t lp = n + kLanes, blocks = n / kLanes, tiles = (m + kRows - 1) / kRows;
  const float* bp = b.data_ptr<float>();
  auto bias_at = [&](int64_t batch) {  // the bias rows of a flat batch index
    int64_t offset = 0, rest = batch;
    for (int64_t i = dims - 1; i >= 0; --i) {
      offset += (rest % sh.lead[i]) * b.stride(i);
      rest /= sh.lead[i];
    }
    return bp + offset;
  };
  auto blocks_of = [&](int64_t batch, const T* base, std::vector<const T*>& at) {  // its 16-key blocks
    at.resize(blocks);
    if (tp != nullptr) {
      const int64_t* row = tp + (batch / sh.kv_heads) * blocks;
      const T* head = base + (batch % sh.kv_heads) * sh.head_stride;
      for (int64_t i = 0; i < blocks; ++i) at[i] = head + row[i] * sh.block_stride;
    } else {
      for (int64_t i = 0; i < blocks; ++i) at[i] = base + (batch * n + i * kLanes) * d_size;
    }
  };
  auto key_range = [&](int64_t batch, int64_t* j0, int64_t* j1) {  // the 16-key blocks its rows see
    const float* bb = bias_at(batch);
    int64_t lo = n, hi = 0;
    for (int64_t r = 0; r < m; ++r) {
      int64_t a, z;
      row_range(bb + r * b.stride(-2), n, &a, &z);
      if (a < z) {
        lo = std::min(lo, a);
        hi = std::max(hi, z);
      }
    }
    *j0 = lo >= hi ? 0 : lo / kLanes;
    *j1 = lo >= hi ? 0 : (hi + kLanes - 1) / kLanes;
  };
  auto run_tiles = [&](int64_t batch, const float* kt, const T* const* vb, float* scratch, int64_t t0, int64_t t1) {
    float* o = buffer(2, kRows * d_size);
    const float* bb = bias_at(batch);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kRows, rows = std::min(kRows, m - r0);
      tile(qp + (batch * m + r0) * d_size, d_size, rows, n, kt, lp, vb, d_size, bb + r0 * b.stride(-2), b.stride(-2), s,
           scratch, o, op + (batch * m + r0) * d_size, d_size);
    }
  };
  const int64_t threads = at::get_num_threads();
  if (tiles >= 4 * threads) {  // long chunks: each batch's keys transposed once, its tiles split
    float* kt = buffer(0, d_size * lp);
    std::vector<const T*> kb, vb;
    for (int64_t batch = 0; batch < batches; ++batch) {
      blocks_of(batch, kp, kb);
      blocks_of(batch, vp, vb);
      int64_t first, last;
      key_range(batch, &first, &last);
      at::parallel_for(first, last, 4, [&](int64_t j0, int64_t j1) {
        transpose(kb.data(), d_size, kt, lp, j0 * kLanes, j1 * kLanes);
      });
      at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
        run_tiles(batch, kt, vb.data(), buffer(1, kRows * lp), t0, t1);
      });
    }
  } else {  // decode rows: a batch's keys transposed by the thread that runs its tiles. Split even
            // where one thread would do (one stream's 3 key heads): run on the calling thread
            // alone, it left the next products ~40 % slower (their team's threads gone idle)
    at::parallel_for(0, batches, 1, [&](int64_t b0, int64_t b1) {
      float* kt = buffer(0, d_size * lp);
      float* scratch = buffer(1, kRows * lp);
      std::vector<const T*> kb, vb;
      for (int64_t batch = b0; batch < b1; ++batch) {
        blocks_of(batch, kp, kb);
        blocks_of(batch, vp, vb);
        int64_t first, last;
        key_range(batch, &first, &last);
        transpose(kb.data(), d_size, kt, lp, first * kLanes, last * kLanes);
        run_tiles(batch, kt, vb.data(), scratch, 0, tiles);
      }
    });
  }
#else
  TORCH_CHECK(false, "hearth::attend: built without AVX-512");
#endif
}

// q [..., M, D]; keys and values either [..., L, D] with q's leading dims (tables None), or, read in
// place through block tables [R, N] (L = 16 N), a layer's cache [Hkv, blocks, 16, D] with q
// [R, Hkv, M, D]; float32 or bfloat16 alike; bias float32, broadcastable to [..., M, L].
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& tables,
                  const at::Tensor& bias, double scale) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(q.device().is_cpu() && (dtype == at::kFloat || dtype == at::kBFloat16) && k.scalar_type() == dtype &&
                  v.scalar_type() == dtype && bias.scalar_type() == at::kFloat,
              "hearth::attend: float32 or bfloat16 CPU tensors, a float32 bias");
  TORCH_CHECK(q.dim() >= 2 && v.sizes() == k.sizes() && k.stride(-1) == 1 && v.stride(-1) == 1 &&
                  k.stride(-2) == k.size(-1) && v.stride(-2) == v.size(-1),
              "hearth::attend: q [..., M, D]; k and v alike, rows of D contiguous");
  Shape sh{{q.sizes().begin(), q.sizes().end() - 2}, q.size(-2), q.size(-1), 0, 0, 0, 0};
  at::Tensor table;
  if (tables.has_value()) {
    table = tables->to(at::kLong).contiguous();
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && table.dim() == 2 && table.size(0) == q.size(0) && k.size(0) == q.size(1) &&
                    k.size(2) == kLanes && k.stride(1) == kLanes * sh.d && v.strides() == k.strides(),
                "hearth::attend: q [R, Hkv, M, D], a cache [Hkv, blocks, 16, D], tables [R, N]");
    const int64_t* ids = table.data_ptr<int64_t>();
    for (int64_t i = 0; i < table.numel(); ++i)
      TORCH_CHECK(ids[i] >= 0 && ids[i] < k.size(1), "hearth::attend: a block table names block ", ids[i],
                  " of ", k.size(1));
    sh.n = table.size(1) * kLanes;
    sh.kv_heads = k.size(0);
    sh.head_stride = k.stride(0);
    sh.block_stride = k.stride(1);
  } else {
    TORCH_CHECK(k.dim() == q.dim(), "hearth::attend: k and v [..., L, D]");
    for (int64_t i = 0; i < q.dim() - 2; ++i) TORCH_CHECK(k.size(i) == sh.lead[i], "hearth::attend: q and k's leading dims differ");
    sh.n = k.size(-2);
  }
  TORCH_CHECK(k.size(-1) == sh.d && sh.d % kLanes == 0 && sh.d <= kMaxHeadDim && sh.n % kLanes == 0,
              "hearth::attend: a head dim (at most 512) and a key length that are multiples of 16");
  std::vector<int64_t> shape(sh.lead);
  shape.push_back(sh.m);
  shape.push_back(sh.n);
  const auto b = bias.expand(shape);
  TORCH_CHECK(b.stride(-1) == 1, "hearth::attend: bias must be contiguous along its last dim");
  const auto qc = q.contiguous();
  const auto kc = tables.has_value() ? k : k.contiguous(), vc = tables.has_value() ? v : v.contiguous();
  auto out = at::empty_like(qc);
  const int64_t* tp = tables.has_value() ? table.data_ptr<int64_t>() : nullptr;
  const auto s = static_cast<float>(scale);
  if (dtype == at::kFloat) {
    run(sh, qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(), tp, b, s, out.data_ptr<float>());
  } else {
    run(sh, qc.data_ptr<c10::BFloat16>(), kc.data_ptr<c10::BFloat16>(), vc.data_ptr<c10::BFloat16>(), tp, b, s,
        out.data_ptr<c10::BFloat16>());
  }
  return out;
}

// The step's new keys and values into their cache blocks, in place: k and v [T, Hkv, D] (any
// strides, D contiguous), the cache [Hkv, blocks, 16, D], token t to block blocks[t], offset
// offsets[t]. One op where indexed assignment took two, each with its own index checks.
void kv_write(at::Tensor kc, at::Tensor vc, const at::Tensor& k, const at::Tensor& v, const at::Tensor& blocks,
              const at::Tensor& offsets) {
  TORCH_CHECK(kc.device().is_cpu() && kc.dim() == 4 && vc.sizes() == kc.sizes() && vc.strides() == kc.strides() &&
                  kc.stride(3) == 1 && kc.stride(2) == kc.size(3),
              "kv_write: caches [Hkv, blocks, 16, D], rows of D contiguous");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.size(1) == kc.size(0) && k.size(2) == kc.size(3) &&
                  k.stride(2) == 1 && v.stride(2) == 1 && k.scalar_type() == kc.scalar_type() &&
                  v.scalar_type() == kc.scalar_type(),
              "kv_write: k and v [T, Hkv, D] of the cache's dtype, D contiguous");
  const auto bl = blocks.to(at::kLong).contiguous(), of = offsets.to(at::kLong).contiguous();
  const int64_t t = k.size(0), heads = k.size(1), num_blocks = kc.size(1), size = kc.size(2);
  TORCH_CHECK(bl.numel() == t && of.numel() == t, "kv_write: a block and an offset per token");
  const int64_t* bp = bl.data_ptr<int64_t>();
  const int64_t* op = of.data_ptr<int64_t>();
  for (int64_t i = 0; i < t; ++i)
    TORCH_CHECK(bp[i] >= 0 && bp[i] < num_blocks && op[i] >= 0 && op[i] < size, "kv_write: block or offset out of range");
  const int64_t bytes = k.size(2) * k.element_size();
  auto* kd = static_cast<char*>(kc.data_ptr());
  auto* vd = static_cast<char*>(vc.data_ptr());
  const auto* ks = static_cast<const char*>(k.data_ptr());
  const auto* vs = static_cast<const char*>(v.data_ptr());
  const int64_t e = k.element_size();
  for (int64_t i = 0; i < t; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t at = (h * kc.stride(0) + bp[i] * kc.stride(1) + op[i] * kc.stride(2)) * e;
      std::memcpy(kd + at, ks + (i * k.stride(0) + h * k.stride(1)) * e, bytes);
      std::memcpy(vd + at, vs + (i * v.stride(0) + h * v.stride(1)) * e, bytes);
    }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hearth, m) {
  m.def("kv_write(Tensor(a!) kc, Tensor(b!) vc, Tensor k, Tensor v, Tensor blocks, Tensor offsets) -> ()");
  m.def("attend(Tensor q, Tensor k, Tensor v, Tensor? tables, Tensor bias, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("attend", &attend);
  m.impl("kv_write", &kv_write);
}
