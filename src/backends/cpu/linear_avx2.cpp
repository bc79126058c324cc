// AVX2 + FMA + F16C inner kernels of the linear ops. Every function carries its own target
// attribute so the rest of the binary stays generic x86-64; callers check has_avx2().
//
// Dense: a register tile of MR rows of x by NR rows of W, each accumulator an 8-lane f32
// vector along K (reduced horizontally once per tile). (MR, NR) = (4, 2) keeps 8 accumulators
// + 4 x vectors + 2 W vectors in the 16 ymm registers; M = 1 uses (1, 8). For M > 1, K is
// cut into KC-sized slices and W into NB-row panels so that the x slice (MR x KC f32) stays
// in L1 and the W panel (NB x KC) in L2 while every row block of x passes over it.
// W elements are widened on load: f16 by vcvtph2ps, bf16 by a 16-bit shift.
//
// 4-bit: one block's 16 code values are scaled by its absmax once (2 vectors), rounded to the
// output dtype, then looked up with two lane permutes + a blend per 8 codes.
// int8: a (int16, widened once) x b (int8 widened on load), vpmaddwd into int32 lanes.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backends/cpu/linear_cpu.h"
#include "nibble/quant.h"
#include "quant/gpu_float.h"

#define NIBBLE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace nibble::cpu::avx2 {

namespace {

enum WKind { kF32 = 0, kF16 = 1, kBF16 = 2 };

template <int WT>
constexpr int64_t w_size() {
  return WT == kF32 ? 4 : 2;
}

template <int WT>
NIBBLE_AVX2 inline __m256 load_w8(const char* w, int64_t i) {
  if constexpr (WT == kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + i);
  } else if constexpr (WT == kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(w) + i)));
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <int WT>
inline float load_w1(const char* w, int64_t i) {
  if constexpr (WT == kF32) {
    return reinterpret_cast<const float*>(w)[i];
  } else if constexpr (WT == kF16) {
    return f16_to_f32(reinterpret_cast<const uint16_t*>(w)[i]);
  } else {
    return bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[i]);
  }
}

NIBBLE_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

NIBBLE_AVX2 inline int32_t hsum8_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// out[m * ldo + n] (+)= x[m, 0:kc] . w[n, 0:kc] for the MR x NR tile. x rows are ldx apart,
// W rows ldw elements apart (w points at element 0 of row 0, already offset to the K slice).
template <int WT, int MR, int NR>
NIBBLE_AVX2 void tile(const float* x, int64_t ldx, const char* w, int64_t ldw, int64_t kc, float* out, int64_t ldo,
                      bool accumulate) {
  __m256 acc[MR][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 xv[MR];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(x + m * ldx + k);
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) {
      __m256 wv = load_w8<WT>(w, n * ldw + k);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[m][n] = _mm256_fmadd_ps(xv[m], wv, acc[m][n]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) {
      float s = hsum8(acc[m][n]);
      for (int64_t t = k; t < kc; ++t) s += x[m * ldx + t] * load_w1<WT>(w, n * ldw + t);
      float* o = out + m * ldo + n;
      *o = accumulate ? *o + s : s;
    }
}

// All n < nb of an MR-row block: NR-wide tiles, then single rows.
template <int WT, int MR, int NR>
NIBBLE_AVX2 void row_block(const float* x, int64_t ldx, const char* w, int64_t ldw, int64_t nb, int64_t kc, float* out,
                           int64_t ldo, bool accumulate) {
  int64_t n = 0;
  for (; n + NR <= nb; n += NR)
    tile<WT, MR, NR>(x, ldx, w + n * ldw * w_size<WT>(), ldw, kc, out + n, ldo, accumulate);
  for (; n < nb; ++n) tile<WT, MR, 1>(x, ldx, w + n * ldw * w_size<WT>(), ldw, kc, out + n, ldo, accumulate);
}

template <int WT>
NIBBLE_AVX2 void gemm_block_t(const float* x, int64_t M, int64_t K, const char* w, int64_t N, float* out, int64_t ldo) {
  if (M == 1) {  // GEMV: W streams once, x (one row) sits in L1
    row_block<WT, 1, 8>(x, K, w, K, N, K, out, ldo, false);
    return;
  }
  constexpr int64_t KC = 512, NB = 32;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    const bool accumulate = k0 > 0;
    for (int64_t n0 = 0; n0 < N; n0 += NB) {
      const int64_t nb = std::min(NB, N - n0);
      const char* wp = w + (n0 * K + k0) * w_size<WT>();
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const float* xp = x + m0 * K + k0;
        float* op = out + m0 * ldo + n0;
        switch (std::min<int64_t>(4, M - m0)) {
          case 4: row_block<WT, 4, 2>(xp, K, wp, K, nb, kc, op, ldo, accumulate); break;
          case 3: row_block<WT, 3, 3>(xp, K, wp, K, nb, kc, op, ldo, accumulate); break;
          case 2: row_block<WT, 2, 4>(xp, K, wp, K, nb, kc, op, ldo, accumulate); break;
          default: row_block<WT, 1, 8>(xp, K, wp, K, nb, kc, op, ldo, accumulate); break;
        }
      }
    }
  }
}

// Flush-to-zero as the GPU's .ftz ops: |v| < FLT_MIN becomes a zero of the same sign.
NIBBLE_AVX2 inline __m256 ftz8(__m256 v) {
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(int(0x80000000u)));
  __m256 keep = _mm256_cmp_ps(_mm256_andnot_ps(sign, v), _mm256_set1_ps(1.17549435e-38f), _CMP_NLT_UQ);
  return _mm256_or_ps(_mm256_and_ps(v, keep), _mm256_and_ps(v, sign));
}

// f32 -> bf16 -> f32, round to nearest even; NaN becomes a quiet NaN (as f32_to_bf16).
NIBBLE_AVX2 inline __m256 round_bf16(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
  __m256i qnan = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
  r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(int(0xffff0000u))));
}

// A block's 16 values, code * absmax with flush-to-zero (quant::mul_ftz; the codes are
// normal or zero), rounded to dt and kept as exact f32 so that a lookup yields the final value.
NIBBLE_AVX2 inline void block_table(const float* code, float absmax, DType dt, __m256& lo, __m256& hi) {
  const __m256 am = _mm256_set1_ps(quant::ftz(absmax));
  lo = ftz8(_mm256_mul_ps(_mm256_loadu_ps(code), am));
  hi = ftz8(_mm256_mul_ps(_mm256_loadu_ps(code + 8), am));
  if (dt == DType::BF16) {
    lo = round_bf16(lo);
    hi = round_bf16(hi);
  } else if (dt == DType::F16) {  // exact round trip through binary16 (F16C rounds to nearest even)
    lo = _mm256_cvtph_ps(_mm256_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    hi = _mm256_cvtph_ps(_mm256_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// The values of the 8 codes in 4 packed bytes [b0>>4, b0&15, b1>>4, ...]: each byte
// duplicated, even lanes shifted right by 4, then a 16-entry lookup as two 8-lane permutes
// blended on bit 3 of the code.
NIBBLE_AVX2 inline __m256 lookup8(const uint8_t* src, __m256 lo_tab, __m256 hi_tab) {
  const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
  uint32_t four;
  std::memcpy(&four, src, 4);
  __m128i bytes = _mm_shuffle_epi8(_mm_cvtsi32_si128(int(four)), dup);
  __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(bytes), shifts), _mm256_set1_epi32(15));
  __m256 lo = _mm256_permutevar8x32_ps(lo_tab, idx), hi = _mm256_permutevar8x32_ps(hi_tab, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// GEMV on packed rows: each 8 weights decoded once and used by all MR rows of x.
template <int MR>
NIBBLE_AVX2 void gemv_4bit_t(const float* x, int64_t K, const uint8_t* packed, const float* absmax, int64_t blocksize,
                             const float* code, DType cdt, int64_t r0, int64_t nrows, float* out, int64_t ldo) {
  for (int64_t r = 0; r < nrows; ++r) {
    __m256 acc[MR][2];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    const int64_t base = (r0 + r) * K;  // element index of the row start (a multiple of 8)
    for (int64_t k = 0; k < K;) {
      const int64_t b = (base + k) / blocksize;
      const int64_t seg = std::min(K, (b + 1) * blocksize - base);  // end of this block within the row
      __m256 lo_tab, hi_tab;
      block_table(code, absmax[b], cdt, lo_tab, hi_tab);
      const uint8_t* src = packed + (base + k) / 2;
      for (; k + 16 <= seg; k += 16, src += 8) {
        const __m256 w0 = lookup8(src, lo_tab, hi_tab), w1 = lookup8(src + 4, lo_tab, hi_tab);
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) {
          acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), w0, acc[m][0]);
          acc[m][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k + 8), w1, acc[m][1]);
        }
      }
      if (k < seg) {  // one group of 8 left in the block
        const __m256 w0 = lookup8(src, lo_tab, hi_tab);
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), w0, acc[m][0]);
        k += 8;
      }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) out[m * ldo + r] = hsum8(_mm256_add_ps(acc[m][0], acc[m][1]));
  }
}

// ---- int8 -----------------------------------------------------------------------------------
template <int MR, int NR>
NIBBLE_AVX2 void tile_i8(const int16_t* a, int64_t K, const int8_t* b, int32_t* out, int64_t ldo) {
  __m256i acc[MR][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m256i av[MR];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) av[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + m * K + k));
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) {
      __m256i bv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + n * K + k)));
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[m][n] = _mm256_add_epi32(acc[m][n], _mm256_madd_epi16(av[m], bv));
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) {
      int32_t s = hsum8_i32(acc[m][n]);
      for (int64_t t = k; t < K; ++t) s += int32_t(a[m * K + t]) * int32_t(b[n * K + t]);
      out[m * ldo + n] = s;
    }
}

template <int MR, int NR>
NIBBLE_AVX2 void row_block_i8(const int16_t* a, int64_t K, const int8_t* b, int64_t nb, int32_t* out, int64_t ldo) {
  int64_t n = 0;
  for (; n + NR <= nb; n += NR) tile_i8<MR, NR>(a, K, b + n * K, out + n, ldo);
  for (; n < nb; ++n) tile_i8<MR, 1>(a, K, b + n * K, out + n, ldo);
}

}  // namespace

NIBBLE_AVX2 void gemm_xwt_block(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                                int64_t ldo) {
  const char* wc = static_cast<const char*>(w);
  switch (wdt) {
    case DType::F32: gemm_block_t<kF32>(x, M, K, wc, N, out, ldo); break;
    case DType::F16: gemm_block_t<kF16>(x, M, K, wc, N, out, ldo); break;
    default: gemm_block_t<kBF16>(x, M, K, wc, N, out, ldo); break;
  }
}

NIBBLE_AVX2 void dequant_4bit_span(const uint8_t* packed, float absmax, DType quant_type, int64_t e, int64_t count,
                                   void* out, DType out_dt) {
  __m256 lo_tab, hi_tab;
  block_table(dequant_table_4bit(quant_type), absmax, out_dt, lo_tab, hi_tab);
  const uint8_t* src = packed + e / 2;
  for (int64_t i = 0; i < count; i += 8) {
    const __m256 v = lookup8(src + i / 2, lo_tab, hi_tab);
    switch (out_dt) {
      case DType::F32: _mm256_storeu_ps(static_cast<float*>(out) + i, v); break;
      case DType::F16:
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        break;
      default: {  // BF16: values are exact bf16 already, keep the upper halves
        __m256i h = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0b1000);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), _mm256_castsi256_si128(p));
        break;
      }
    }
  }
}

NIBBLE_AVX2 void gemv_4bit(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax,
                           int64_t blocksize, DType quant_type, DType compute_dtype, int64_t r0, int64_t nrows,
                           float* out, int64_t ldo) {
  const float* code = dequant_table_4bit(quant_type);
  switch (M) {
    case 1: gemv_4bit_t<1>(x, K, packed, absmax, blocksize, code, compute_dtype, r0, nrows, out, ldo); break;
    case 2: gemv_4bit_t<2>(x, K, packed, absmax, blocksize, code, compute_dtype, r0, nrows, out, ldo); break;
    default: gemv_4bit_t<3>(x, K, packed, absmax, blocksize, code, compute_dtype, r0, nrows, out, ldo); break;
  }
}

NIBBLE_AVX2 void gemm_i8_block(const int16_t* a16, int64_t M, int64_t K, const int8_t* b, int64_t N, int32_t* out,
                               int64_t ldo) {
  if (M == 1) {
    row_block_i8<1, 8>(a16, K, b, N, out, ldo);
    return;
  }
  constexpr int64_t NB = 32;
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t nb = std::min(NB, N - n0);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int16_t* ap = a16 + m0 * K;
      int32_t* op = out + m0 * ldo + n0;
      switch (std::min<int64_t>(4, M - m0)) {
        case 4: row_block_i8<4, 2>(ap, K, b + n0 * K, nb, op, ldo); break;
        case 3: row_block_i8<3, 3>(ap, K, b + n0 * K, nb, op, ldo); break;
        case 2: row_block_i8<2, 4>(ap, K, b + n0 * K, nb, op, ldo); break;
        default: row_block_i8<1, 8>(ap, K, b + n0 * K, nb, op, ldo); break;
      }
    }
  }
}

}  // namespace nibble::cpu::avx2
