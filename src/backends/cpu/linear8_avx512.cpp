// AVX-512 VNNI kernels of LLM.int8 (linear_int8): the int8 x int8 -> int32 products and the
// f16 dequantization epilogue, for one tile of output columns.
//
// Products: vpdpbusd multiplies unsigned by signed bytes, four per int32 lane. The signed
// activation a is fed as a + 128 (a XOR 0x80, an unsigned byte) and the excess is taken off
// exactly afterwards: sum (a + 128) w = sum a w + 128 sum w, with sum w from vpdpbusd of a
// vector of ones. All of it is integer arithmetic in int32 (|sum| < 2^31 for K < 2^16), so
// the result is bit for bit the portable kernel's; a K tail is read with byte masks (zeros).
//   M <= 4 (decode): one pass, MR rows of a by NR = 4 rows of W, the sums of W alongside;
//   M > 4 (prefill): sum w per W row first, then 4 x 4 register tiles over the column tile
//   (the caller's 64 rows of W, 128 KiB at K = 2048, stay in L2 while all rows of a pass).
//
// Epilogue: int8_mm_dequant's fmaf(acc * SCA * SCB, 1/127^2, bias) with bitsandbytes'
// flush-to-zero, rounded to f16 (vcvtps2ph, round to nearest even) and then to the
// activation dtype, 16 columns per step; the same operations in the same order as the scalar
// loop of linear_cpu.cpp.
// GCC 12's AVX-512 headers start intrinsics from _mm512_undefined_*() values, which -Wall
// reports as uninitialized (GCC PR 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "backends/cpu/linear_cpu.h"
#include "quant/gpu_float.h"

#define NIBBLE_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

namespace nibble::cpu::avx512 {

namespace {

NIBBLE_VNNI inline __mmask64 tail_mask(int64_t left) {
  return left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
}

// Rows n0 .. n0 + NR of b against MR rows of au, with the row sums of b when SUMS.
template <int MR, int NR, bool SUMS>
NIBBLE_VNNI void tile(const uint8_t* au, int64_t lda, int64_t K, const int8_t* b, const int32_t* wsum,
                      int32_t* out, int64_t ldo) {
  __m512i acc[MR][NR], sum[NR];
  const __m512i ones = _mm512_set1_epi8(1);
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    sum[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_setzero_si512();
  }
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 mk = tail_mask(K - k);
    __m512i w[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      w[r] = _mm512_maskz_loadu_epi8(mk, b + r * K + k);
      if constexpr (SUMS) sum[r] = _mm512_dpbusd_epi32(sum[r], ones, w[r]);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512i a = _mm512_maskz_loadu_epi8(mk, au + m * lda + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_dpbusd_epi32(acc[m][r], a, w[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const int32_t s = SUMS ? _mm512_reduce_add_epi32(sum[r]) : wsum[r];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) out[m * ldo + r] = _mm512_reduce_add_epi32(acc[m][r]) - 128 * s;
  }
}

template <int MR, bool SUMS>
NIBBLE_VNNI void rows(const uint8_t* au, int64_t lda, int64_t K, const int8_t* b, int64_t N,
                      const int32_t* wsum, int32_t* out, int64_t ldo) {
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) tile<MR, 4, SUMS>(au, lda, K, b + n * K, wsum + n, out + n, ldo);
  for (; n < N; ++n) tile<MR, 1, SUMS>(au, lda, K, b + n * K, wsum + n, out + n, ldo);
}

template <bool SUMS>
NIBBLE_VNNI void rows_m(const uint8_t* au, int64_t M, int64_t K, const int8_t* b, int64_t N,
                        const int32_t* wsum, int32_t* out, int64_t ldo) {
  for (int64_t m = 0; m < M; m += 4) {
    const uint8_t* a = au + m * K;
    int32_t* o = out + m * ldo;
    switch (std::min<int64_t>(4, M - m)) {
      case 4:
        rows<4, SUMS>(a, K, K, b, N, wsum, o, ldo);
        break;
      case 3:
        rows<3, SUMS>(a, K, K, b, N, wsum, o, ldo);
        break;
      case 2:
        rows<2, SUMS>(a, K, K, b, N, wsum, o, ldo);
        break;
      default:
        rows<1, SUMS>(a, K, K, b, N, wsum, o, ldo);
        break;
    }
  }
}

NIBBLE_VNNI inline __m512 ftz16(__m512 v) {
  const __mmask16 sub = _mm512_fpclass_ps_mask(v, 0x20);  // denormal class
  return _mm512_castsi512_ps(_mm512_mask_and_epi32(_mm512_castps_si512(v), sub, _mm512_castps_si512(v),
                                                   _mm512_set1_epi32(int(0x80000000u))));
}

NIBBLE_VNNI inline __m512 round_f16(__m512 v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// f32 -> bf16 -> f32, round to nearest even, NaN to quiet NaN (as f32_to_bf16).
NIBBLE_VNNI inline __m512 round_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xffff0000u))));
}

}  // namespace

NIBBLE_VNNI void gemm_i8_block(const uint8_t* au, int64_t M, int64_t K, const int8_t* b, int64_t N,
                               int32_t* out, int64_t ldo) {
  if (M <= 4) {
    rows_m<true>(au, M, K, b, N, nullptr, out, ldo);
    return;
  }
  constexpr int64_t kMaxN = 256;
  int32_t wsum[kMaxN];  // [nb] sum of each W row
  for (int64_t n0 = 0; n0 < N; n0 += kMaxN) {
    const int64_t nb = std::min(kMaxN, N - n0);
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t n = 0; n < nb; ++n) {
      __m512i s = _mm512_setzero_si512();
      const int8_t* row = b + (n0 + n) * K;
      for (int64_t k = 0; k < K; k += 64)
        s = _mm512_dpbusd_epi32(s, ones, _mm512_maskz_loadu_epi8(tail_mask(K - k), row + k));
      wsum[n] = _mm512_reduce_add_epi32(s);
    }
    rows_m<false>(au, M, K, b + n0 * K, nb, wsum, out + n0, ldo);
  }
}

NIBBLE_VNNI void int8_dequant_rows(const int32_t* acc, int64_t lda, int64_t M, int64_t nc, const float* sca,
                                   const float* scb, const float* bias, bool fused_bias, DType act_dtype,
                                   float* out, int64_t ldo) {
  for (int64_t j = 0; j < nc; j += 16) {
    const __mmask16 mk = nc - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (nc - j)) - 1);
    const __m512 sb = ftz16(_mm512_maskz_loadu_ps(mk, scb + j));
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + j) : _mm512_setzero_ps();
    const __m512 bias_h = fused_bias ? bv : _mm512_setzero_ps();
    for (int64_t m = 0; m < M; ++m) {
      const __m512 a = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mk, acc + m * lda + j));
      const __m512 p = ftz16(_mm512_mul_ps(ftz16(_mm512_mul_ps(a, _mm512_set1_ps(quant::ftz(sca[m])))), sb));
      __m512 v = round_f16(ftz16(_mm512_fmadd_ps(p, _mm512_set1_ps(6.200012e-05f), bias_h)));
      if (bias && !fused_bias) v = round_f16(_mm512_add_ps(v, bv));  // out.add_(bias)
      if (act_dtype == DType::BF16) v = round_bf16(v);               // .to(A.dtype)
      _mm512_mask_storeu_ps(out + m * ldo + j, mk, v);
    }
  }
}

}  // namespace nibble::cpu::avx512
