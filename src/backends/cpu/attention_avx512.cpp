// AVX-512 tiles of causal attention (nn_cpu.cpp's attention at the AVX-512 level): up to
// kAttnTileRows query rows of one head against a run of keys, so each key (and value) row loaded
// from cache serves several rows. A score is a 16-lane dot (lane l sums d = l mod 16 in order)
// reduced by one fixed tree, and a weighted sum runs over the keys in order, whatever the tile's
// row count and a key's place in it: a row's result does not depend on the rows beside it (a
// decode row equals the same row of a prefill).
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "backends/cpu/avx512_common.h"
#include "backends/cpu/nn_cpu.h"

#define NIBBLE_AVX512_ATTN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace nibble::cpu::avx512 {
namespace {

// The four sums of a0..a3, each over its 16 lanes by one fixed tree (whichever slot a key takes).
NIBBLE_AVX512_ATTN inline __m128 hsum4x16(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Rows [0, R) against keys [0, n), four at a time (a last partial quad repeats key n - 1):
// lane l of a (row, key) accumulator sums q[d] k[d] over d = l mod 16 in order (the last step
// masked), then hsum4x16.
template <int R>
NIBBLE_AVX512_ATTN void qk_rows(const float* q, int64_t ldq, int64_t D, const float* k, int64_t ldk,
                                int64_t n, float* sc, int64_t ldsc) {
  const int64_t d16 = D / 16 * 16;
  const __mmask16 tail = lanes(D - d16);
  for (int64_t j = 0; j < n; j += 4) {
    const float* k0 = k + j * ldk;
    const float* k1 = k + std::min(j + 1, n - 1) * ldk;
    const float* k2 = k + std::min(j + 2, n - 1) * ldk;
    const float* k3 = k + std::min(j + 3, n - 1) * ldk;
    __m512 a0[R], a1[R], a2[R], a3[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = a2[r] = a3[r] = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d < d16; d += 16) {
      const __m512 c0 = _mm512_loadu_ps(k0 + d), c1 = _mm512_loadu_ps(k1 + d), c2 = _mm512_loadu_ps(k2 + d),
                   c3 = _mm512_loadu_ps(k3 + d);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512 qv = _mm512_loadu_ps(q + r * ldq + d);
        a0[r] = _mm512_fmadd_ps(qv, c0, a0[r]);
        a1[r] = _mm512_fmadd_ps(qv, c1, a1[r]);
        a2[r] = _mm512_fmadd_ps(qv, c2, a2[r]);
        a3[r] = _mm512_fmadd_ps(qv, c3, a3[r]);
      }
    }
    if (d < D) {
      const __m512 c0 = _mm512_maskz_loadu_ps(tail, k0 + d), c1 = _mm512_maskz_loadu_ps(tail, k1 + d),
                   c2 = _mm512_maskz_loadu_ps(tail, k2 + d), c3 = _mm512_maskz_loadu_ps(tail, k3 + d);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512 qv = _mm512_maskz_loadu_ps(tail, q + r * ldq + d);
        a0[r] = _mm512_fmadd_ps(qv, c0, a0[r]);
        a1[r] = _mm512_fmadd_ps(qv, c1, a1[r]);
        a2[r] = _mm512_fmadd_ps(qv, c2, a2[r]);
        a3[r] = _mm512_fmadd_ps(qv, c3, a3[r]);
      }
    }
    const __mmask8 m = n - j >= 4 ? __mmask8(15) : __mmask8((1u << (n - j)) - 1);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
      _mm_mask_storeu_ps(sc + r * ldsc + j, m, hsum4x16(a0[r], a1[r], a2[r], a3[r]));
  }
}

// R rows, value dims [d, d + 16 * ND) (the last zmm masked by `last`).
template <int R, int ND>
NIBBLE_AVX512_ATTN inline void pv_block(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t n,
                                        int64_t d, __mmask16 last, float* acc, int64_t lda) {
  __m512 a[R][ND];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < ND; ++c) a[r][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    __m512 vv[ND];
#pragma GCC unroll 8
    for (int c = 0; c < ND; ++c)
      vv[c] = _mm512_maskz_loadu_ps(c == ND - 1 ? last : __mmask16(0xffff), v + j * ldv + d + 16 * c);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * ldp + j]);
#pragma GCC unroll 8
      for (int c = 0; c < ND; ++c) a[r][c] = _mm512_fmadd_ps(pb, vv[c], a[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < ND; ++c)
      _mm512_mask_storeu_ps(acc + r * lda + d + 16 * c, c == ND - 1 ? last : __mmask16(0xffff), a[r][c]);
}

// Value dims in passes of 16 * ND: with few rows one pass holds more of a value row (a decode
// row walks the values once, not Dv / 32 times), at most 16 accumulators.
template <int R>
NIBBLE_AVX512_ATTN void pv_rows(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t Dv,
                                int64_t n, float* acc, int64_t lda) {
  constexpr int ND = R <= 2 ? 8 : R <= 4 ? 4 : 2;
  int64_t d = 0;
  for (; d + 16 * ND <= Dv; d += 16 * ND) pv_block<R, ND>(p, ldp, v, ldv, n, d, __mmask16(0xffff), acc, lda);
  for (; d < Dv; d += 16) pv_block<R, 1>(p, ldp, v, ldv, n, d, lanes(Dv - d), acc, lda);
}

template <class F>
void with_rows(int R, F&& f) {
  switch (R) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    default:
      return f(std::integral_constant<int, 8>{});
  }
}

}  // namespace

void qk_tile(const float* q, int64_t ldq, int R, int64_t D, const float* k, int64_t ldk, int64_t n, float* sc,
             int64_t ldsc) {
  for (int r0 = 0; r0 < R; r0 += 4) {  // four rows a pass: 16 accumulators
    const float* qr = q + r0 * ldq;
    float* sr = sc + r0 * ldsc;
    switch (std::min(R - r0, 4)) {
      case 1:
        qk_rows<1>(qr, ldq, D, k, ldk, n, sr, ldsc);
        break;
      case 2:
        qk_rows<2>(qr, ldq, D, k, ldk, n, sr, ldsc);
        break;
      case 3:
        qk_rows<3>(qr, ldq, D, k, ldk, n, sr, ldsc);
        break;
      default:
        qk_rows<4>(qr, ldq, D, k, ldk, n, sr, ldsc);
    }
  }
}

void pv_tile(const float* p, int64_t ldp, int R, const float* v, int64_t ldv, int64_t Dv, int64_t n,
             float* acc, int64_t lda) {
  with_rows(R, [&](auto r) { pv_rows<decltype(r)::value>(p, ldp, v, ldv, Dv, n, acc, lda); });
}

}  // namespace nibble::cpu::avx512
