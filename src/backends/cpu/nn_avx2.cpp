// AVX2 + FMA kernels of attention's two inner loops (per-function target attributes; callers
// check has_avx2()). Scores: 4 keys per pass so each q vector load serves 4 FMAs, the four
// 8-lane sums reduced together with hadd. Weighted sum of V: the output row is cut into
// 64-float chunks held in 8 accumulator registers while all keys stream past. Softmax's
// exponentials: a vector exp (range reduction + polynomial, ~1 ulp).
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include <cmath>

#include "backends/cpu/nn_cpu.h"

#define NIBBLE_AVX2 __attribute__((target("avx2,fma")))

namespace nibble::cpu::avx2 {

namespace {

// {hsum(a), hsum(b), hsum(c), hsum(d)}
NIBBLE_AVX2 inline __m128 hsum4x8(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

NIBBLE_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int NV>  // NV vectors of 8 output values
NIBBLE_AVX2 inline void pv_chunk(const float* p, const float* v, int64_t ldv, int64_t n, float* acc) {
  __m256 a[NV];
#pragma GCC unroll 8
  for (int t = 0; t < NV; ++t) a[t] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const float* vj = v + j * ldv;
#pragma GCC unroll 8
    for (int t = 0; t < NV; ++t) a[t] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * t), a[t]);
  }
#pragma GCC unroll 8
  for (int t = 0; t < NV; ++t) _mm256_storeu_ps(acc + 8 * t, a[t]);
}

}  // namespace

NIBBLE_AVX2 void qk_dots(const float* q, const float* k, int64_t ldk, int64_t D, int64_t n, float* s) {
  const int64_t d8 = D / 8 * 8;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k0 = k + j * ldk;
    const float* k1 = k0 + ldk;
    const float* k2 = k1 + ldk;
    const float* k3 = k2 + ldk;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < d8; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + d), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + d), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + d), a3);
    }
    _mm_storeu_ps(s + j, hsum4x8(a0, a1, a2, a3));
    for (int64_t d = d8; d < D; ++d) {
      s[j] += q[d] * k0[d];
      s[j + 1] += q[d] * k1[d];
      s[j + 2] += q[d] * k2[d];
      s[j + 3] += q[d] * k3[d];
    }
  }
  for (; j < n; ++j) {
    const float* kj = k + j * ldk;
    __m256 a0 = _mm256_setzero_ps();
    for (int64_t d = 0; d < d8; d += 8)
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kj + d), a0);
    float r = hsum8(a0);
    for (int64_t d = d8; d < D; ++d) r += q[d] * kj[d];
    s[j] = r;
  }
}

NIBBLE_AVX2 float scale_max(float* s, int64_t n, float scale) {
  const __m256 sc = _mm256_set1_ps(scale);
  __m256 m8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(s + j), sc);
    _mm256_storeu_ps(s + j, x);
    m8 = _mm256_max_ps(m8, x);
  }
  alignas(32) float m[8];
  _mm256_store_ps(m, m8);
  float mx = m[0];
  for (int l = 1; l < 8; ++l) mx = std::max(mx, m[l]);
  for (; j < n; ++j) {
    s[j] *= scale;
    mx = std::max(mx, s[j]);
  }
  return mx;
}

NIBBLE_AVX2 float exp_sum(float* s, int64_t n, float mx) {
  // exp(x) = 2^k * e^r, k = round(x log2 e), r = x - k ln 2 (ln 2 split in two for an exact
  // product), e^r by Cephes' degree-6 polynomial: about 1 ulp. x < -87.3 gives 0.
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f), c1 = _mm256_set1_ps(0.693359375f),
               c2 = _mm256_set1_ps(-2.12194440e-4f), lo = _mm256_set1_ps(-87.3f), one = _mm256_set1_ps(1.0f);
  const __m256 m = _mm256_set1_ps(mx);
  __m256 sum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 x = _mm256_sub_ps(_mm256_loadu_ps(s + j), m);
    __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, c2, _mm256_fnmadd_ps(k, c1, x));
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    y = _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), keep);
    _mm256_storeu_ps(s + j, y);
    sum = _mm256_add_ps(sum, y);
  }
  float total = hsum8(sum);
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    total += s[j];
  }
  return total;
}

NIBBLE_AVX2 void pv_sum(const float* p, const float* v, int64_t ldv, int64_t Dv, int64_t n, float* acc) {
  int64_t d = 0;
  for (; d + 64 <= Dv; d += 64) pv_chunk<8>(p, v + d, ldv, n, acc + d);
  for (; d + 8 <= Dv; d += 8) pv_chunk<1>(p, v + d, ldv, n, acc + d);
  for (; d < Dv; ++d) {
    float r = 0.0f;
    for (int64_t j = 0; j < n; ++j) r += p[j] * v[j * ldv + d];
    acc[d] = r;
  }
}

}  // namespace nibble::cpu::avx2
