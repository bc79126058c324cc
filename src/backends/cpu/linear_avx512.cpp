// AVX-512 GEMV (M <= 4) for f32/f16/bf16 weights and f32 x (the model's fp linears: the
// output head of every model, all layers of a bf16 one): W rows widened on load (bf16 by a
// shift, f16 by vcvtph2ps), NR rows per pass so each x load serves NR rows, and a software
// prefetch along each row, since the hardware prefetcher ramps up too slowly on NR short
// interleaved streams: one row group ahead, the same offset in row r + NR (a fixed 8 KiB
// landed inside the group itself for rows of 4 KiB and more; one group ahead took a bf16
// Llama-3.2-1B decode from 10.8 / 10.7 to 12.6 / 11.9 tok/s, interleaved A/B, 2 threads).
//
// AVX512_BF16 GEMV for bf16 weights (decode through a bf16 model, and the bf16 output head
// of 4-bit and int8 models): x (bf16 values, rounded by the caller) times W's rows as
// stored, 32 elements per vdpbf16ps, which multiplies pairs of bf16 values exactly in f32 and
// adds both to an f32 lane: only the summation order differs from the fp32 kernels. A W
// register serves MR rows of x; MR x NR accumulators hide the latency.
//
// vdpbf16ps reads subnormal inputs as zero. x with a bf16 subnormal never comes here (the
// caller checks); for W, each loaded vector is tested (exponent zero, mantissa not) and a
// tile of rows that holds one is recomputed by the AVX2 fp32 kernel.
//
// Also the elementwise rounding of the linear ops (x to the compute dtype, the epilogue's
// bias add and rounding), 16 lanes at a time with the scalar code's exact rounding.
// GCC 12's AVX-512 headers start intrinsics from _mm512_undefined_*() values, which -Wall
// reports as uninitialized (GCC PR 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/linear_cpu.h"

#define NIBBLE_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
#define NIBBLE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace nibble::cpu::avx512 {

namespace {

NIBBLE_AVX512BF16 inline float hsum(__m512 v) {
  return _mm512_reduce_add_ps(v);
}

// Rows 0 .. NR of w against MR rows of xb; false (out untouched) if a W value is subnormal.
template <int MR, int NR>
NIBBLE_AVX512BF16 bool tile(const uint16_t* xb, int64_t K, const uint16_t* w, float* out, int64_t ldo) {
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  const __m512i expo = _mm512_set1_epi16(0x7f80), mant = _mm512_set1_epi16(0x007f);
  __mmask32 sub = 0;
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mk = K - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (K - k)) - 1;
    __m512i xv[MR];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) xv[m] = _mm512_maskz_loadu_epi16(mk, xb + m * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mk, w + r * K + k);
      sub |= _mm512_mask_test_epi16_mask(_mm512_testn_epi16_mask(wv, expo), wv, mant);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)xv[m], (__m512bh)wv);
    }
  }
  if (sub) return false;
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) out[m * ldo + r] = hsum(acc[m][r]);
  return true;
}

template <int MR, int NR>
NIBBLE_AVX512BF16 void rows(const float* x, const uint16_t* xb, int64_t K, const uint16_t* w, int64_t N,
                            float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + NR <= N; r += NR)
    if (!tile<MR, NR>(xb, K, w + r * K, out + r, ldo))
      avx2::gemm_xwt_block(x, MR, K, w + r * K, DType::BF16, NR, out + r, ldo);
  for (; r < N; ++r)
    if (!tile<MR, 1>(xb, K, w + r * K, out + r, ldo))
      avx2::gemm_xwt_block(x, MR, K, w + r * K, DType::BF16, 1, out + r, ldo);
}

// f32 -> bf16 -> f32, round to nearest even, NaN to quiet NaN (as f32_to_bf16).
NIBBLE_AVX512 inline __m512 round_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xffff0000u))));
}

NIBBLE_AVX512 inline __m512 round_dt(__m512 v, DType dt) {
  if (dt == DType::BF16) return round_bf16(v);
  if (dt == DType::F16)
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return v;
}

template <int WT>  // 0 f32, 1 f16, 2 bf16
NIBBLE_AVX512 inline __m512 load_w16(const char* w, int64_t i, __mmask16 mk) {
  if constexpr (WT == 0) {
    return _mm512_maskz_loadu_ps(mk, reinterpret_cast<const float*>(w) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mk, reinterpret_cast<const uint16_t*>(w) + i);
    if constexpr (WT == 1) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

template <int WT, int MR, int NR>
NIBBLE_AVX512 void dense_tile(const float* x, int64_t K, const char* w, float* out, int64_t ldo) {
  constexpr int64_t es = WT == 0 ? 4 : 2;
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mk = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
    __m512 xv[MR];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) xv[m] = _mm512_maskz_loadu_ps(mk, x + m * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const char* row = w + r * K * es;
      if ((k * es) % 64 == 0) _mm_prefetch(row + k * es + NR * K * es, _MM_HINT_T0);
      const __m512 wv = load_w16<WT>(row, k, mk);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_fmadd_ps(xv[m], wv, acc[m][r]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) out[m * ldo + r] = _mm512_reduce_add_ps(acc[m][r]);
}

template <int WT, int MR>
NIBBLE_AVX512 void dense_rows(const float* x, int64_t K, const char* w, int64_t N, float* out, int64_t ldo) {
  constexpr int64_t es = WT == 0 ? 4 : 2;
  constexpr int NR = MR == 1 ? 8 : 4;
  int64_t r = 0;
  for (; r + NR <= N; r += NR) dense_tile<WT, MR, NR>(x, K, w + r * K * es, out + r, ldo);
  for (; r < N; ++r) dense_tile<WT, MR, 1>(x, K, w + r * K * es, out + r, ldo);
}

template <int WT>
NIBBLE_AVX512 void dense_m(const float* x, int64_t M, int64_t K, const char* w, int64_t N, float* out,
                           int64_t ldo) {
  switch (M) {
    case 1:
      return dense_rows<WT, 1>(x, K, w, N, out, ldo);
    case 2:
      return dense_rows<WT, 2>(x, K, w, N, out, ldo);
    case 3:
      return dense_rows<WT, 3>(x, K, w, N, out, ldo);
    default:
      return dense_rows<WT, 4>(x, K, w, N, out, ldo);
  }
}

}  // namespace

void gemv_dense(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                int64_t ldo) {
  const char* wc = static_cast<const char*>(w);
  if (wdt == DType::F32)
    dense_m<0>(x, M, K, wc, N, out, ldo);
  else if (wdt == DType::F16)
    dense_m<1>(x, M, K, wc, N, out, ldo);
  else
    dense_m<2>(x, M, K, wc, N, out, ldo);
}

NIBBLE_AVX512 void round_into(const float* x, float* y, int64_t n, DType dt) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, mk, round_dt(_mm512_maskz_loadu_ps(mk, x + i), dt));
  }
}

NIBBLE_AVX512 void add_round(float* o, const float* bias, int64_t n, DType dt) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(mk, o + i);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, bias + i));
    _mm512_mask_storeu_ps(o + i, mk, round_dt(v, dt));
  }
}

NIBBLE_AVX512BF16 void gemv_bf16(const float* x, int64_t M, int64_t K, const uint16_t* w, int64_t N,
                                 float* out, int64_t ldo) {
  static thread_local std::vector<uint16_t> xb;  // [M, K] x as bf16 bits
  xb.resize(size_t(M * K));
  for (int64_t i = 0; i < M * K; ++i) {  // x holds bf16 values: truncation is exact
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    xb[size_t(i)] = uint16_t(u >> 16);
  }
  const uint16_t* xp = xb.data();
  switch (M) {
    case 1:
      return rows<1, 8>(x, xp, K, w, N, out, ldo);
    case 2:
      return rows<2, 4>(x, xp, K, w, N, out, ldo);
    case 3:
      return rows<3, 4>(x, xp, K, w, N, out, ldo);
    default:
      return rows<4, 4>(x, xp, K, w, N, out, ldo);
  }
}

}  // namespace nibble::cpu::avx512
