// AVX2 + FMA + F16C inner kernels of the linear ops for few rows of x (the packed GEMM for
// many rows is gemm_avx2.cpp, 4-bit decoding linear4_avx2.cpp). Every function carries its
// own target attribute so the rest of the binary stays generic x86-64; callers check AVX2.
//
// Dense: a register tile of MR rows of x by NR rows of W, each accumulator an 8-lane f32
// vector along K (reduced horizontally once per tile). (MR, NR) = (4, 2) keeps 8 accumulators
// + 4 x vectors + 2 W vectors in the 16 ymm registers; M = 1 uses (1, 8). For M > 1, K is
// cut into KC-sized slices and W into NB-row panels so that the x slice (MR x KC f32) stays
// in L1 and the W panel (NB x KC) in L2 while every row block of x passes over it.
// W elements are widened on load: f16 by vcvtph2ps, bf16 by a 16-bit shift.
//
// int8: a (int16, widened once) x b (int8 widened on load), vpmaddwd into int32 lanes.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backends/cpu/linear_cpu.h"
#include "nibble/quant.h"

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
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(w) + i)));
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
NIBBLE_AVX2 void tile(const float* x, int64_t ldx, const char* w, int64_t ldw, int64_t kc, float* out,
                      int64_t ldo, bool accumulate) {
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
NIBBLE_AVX2 void row_block(const float* x, int64_t ldx, const char* w, int64_t ldw, int64_t nb, int64_t kc,
                           float* out, int64_t ldo, bool accumulate) {
  int64_t n = 0;
  for (; n + NR <= nb; n += NR)
    tile<WT, MR, NR>(x, ldx, w + n * ldw * w_size<WT>(), ldw, kc, out + n, ldo, accumulate);
  for (; n < nb; ++n) tile<WT, MR, 1>(x, ldx, w + n * ldw * w_size<WT>(), ldw, kc, out + n, ldo, accumulate);
}

template <int WT>
NIBBLE_AVX2 void gemm_block_t(const float* x, int64_t M, int64_t K, const char* w, int64_t N, float* out,
                              int64_t ldo) {
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
          case 4:
            row_block<WT, 4, 2>(xp, K, wp, K, nb, kc, op, ldo, accumulate);
            break;
          case 3:
            row_block<WT, 3, 3>(xp, K, wp, K, nb, kc, op, ldo, accumulate);
            break;
          case 2:
            row_block<WT, 2, 4>(xp, K, wp, K, nb, kc, op, ldo, accumulate);
            break;
          default:
            row_block<WT, 1, 8>(xp, K, wp, K, nb, kc, op, ldo, accumulate);
            break;
        }
      }
    }
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
NIBBLE_AVX2 void row_block_i8(const int16_t* a, int64_t K, const int8_t* b, int64_t nb, int32_t* out,
                              int64_t ldo) {
  int64_t n = 0;
  for (; n + NR <= nb; n += NR) tile_i8<MR, NR>(a, K, b + n * K, out + n, ldo);
  for (; n < nb; ++n) tile_i8<MR, 1>(a, K, b + n * K, out + n, ldo);
}

}  // namespace

NIBBLE_AVX2 void gemm_xwt_block(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
                                float* out, int64_t ldo) {
  if (M >= 24) {  // enough rows to amortize packing W (measured crossover ~20): the packed GEMM
    gemm_packed(x, M, K, w, wdt, N, out, ldo);
    return;
  }
  const char* wc = static_cast<const char*>(w);
  switch (wdt) {
    case DType::F32:
      gemm_block_t<kF32>(x, M, K, wc, N, out, ldo);
      break;
    case DType::F16:
      gemm_block_t<kF16>(x, M, K, wc, N, out, ldo);
      break;
    default:
      gemm_block_t<kBF16>(x, M, K, wc, N, out, ldo);
      break;
  }
}

NIBBLE_AVX2 void gemm_i8_block(const int16_t* a16, int64_t M, int64_t K, const int8_t* b, int64_t N,
                               int32_t* out, int64_t ldo) {
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
        case 4:
          row_block_i8<4, 2>(ap, K, b + n0 * K, nb, op, ldo);
          break;
        case 3:
          row_block_i8<3, 3>(ap, K, b + n0 * K, nb, op, ldo);
          break;
        case 2:
          row_block_i8<2, 4>(ap, K, b + n0 * K, nb, op, ldo);
          break;
        default:
          row_block_i8<1, 8>(ap, K, b + n0 * K, nb, op, ldo);
          break;
      }
    }
  }
}

}  // namespace nibble::cpu::avx2
