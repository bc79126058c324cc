// AVX-512 GEMM for many rows of x (prefill): out[M, N] = x[M, K] · W[N, K]^T, the packed
// scheme of gemm_avx2.cpp (W panels packed once per KC slice, a register tile of MR rows of
// x by 32 columns running over the panel for every block of rows, the panel in L2) with
// 512-bit registers. Two kernels:
//
//   bf16 (AVX512_BF16), when x and W both hold bf16 values (x rounded to bf16 by the caller,
//     W stored in bf16 or dequantized to it): panels are packed as bf16 pairs along K,
//     [strip][k / 2][32 columns][2], x as bf16 pairs per row; vdpbf16ps multiplies a
//     broadcast pair of x by 16 pairs of W and adds both products to an f32 lane. Products
//     of two bf16 values are exact in f32, so only the summation order differs from the fp32
//     kernels -- except that vdpbf16ps reads subnormal inputs as zero: x with a bf16
//     subnormal is sent to the fp32 kernel (the whole call), a panel of W with one is
//     computed by the fp32 kernel (that panel only). Partial sums below 2^-126 may flush to
//     zero, an absolute change far below the summation-order error.
//   fp32 (AVX-512 F), any W dtype widened on packing: [strip][k][32 columns] f32, one
//     broadcast of x and two FMAs per k and row.
// MR = 12 rows x 32 columns = 24 zmm accumulators (of 32 registers).
// GCC 12's AVX-512 headers start intrinsics from _mm512_undefined_*() values, which -Wall
// reports as uninitialized (GCC PR 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/avx512_common.h"
#include "backends/cpu/linear_cpu.h"

#define NIBBLE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define NIBBLE_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

namespace nibble::cpu::avx512 {

namespace {

constexpr int64_t kMR = 12, kNR = 32, kKC = 256, kNC = 256;

inline bool bf16_subnormal(uint16_t h) {
  return (h & 0x7f80) == 0 && (h & 0x007f) != 0;
}

// ---- fp32 -----------------------------------------------------------------------------------
// bp[strip][k][32] = W[n0 + 32 strip + j][k0 + k] as f32 (zero past the nc valid columns).
void pack_f32(const char* w, DType dt, int64_t K, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float* bp) {
  const int64_t es = dtype_bits(dt) / 8;
  const int64_t strips = (nc + kNR - 1) / kNR;
  for (int64_t s = 0; s < strips; ++s) {
    float* dst = bp + s * kc * kNR;
    for (int64_t j = 0; j < kNR; ++j) {
      const int64_t n = s * kNR + j;
      if (n >= nc) {
        for (int64_t k = 0; k < kc; ++k) dst[k * kNR + j] = 0.0f;
        continue;
      }
      const char* row = w + ((n0 + n) * K + k0) * es;
      for (int64_t k = 0; k < kc; ++k) dst[k * kNR + j] = load_as_f32(row, dt, k);
    }
  }
}

// The same, 16 x 16 blocks through registers where whole (the scalar loop above otherwise).
NIBBLE_AVX512 void pack_f32_fast(const char* w, DType dt, int64_t K, int64_t n0, int64_t nc, int64_t k0,
                                 int64_t kc, float* bp) {
  if (nc % 16 != 0 || kc % 16 != 0) return pack_f32(w, dt, K, n0, nc, k0, kc, bp);
  const int64_t es = dtype_bits(dt) / 8;
  const int64_t strips = (nc + kNR - 1) / kNR;
  if (nc % kNR != 0) {  // zero the unused half strip
    float* dst = bp + (strips - 1) * kc * kNR;
    for (int64_t k = 0; k < kc; ++k) _mm512_storeu_ps(dst + k * kNR + 16, _mm512_setzero_ps());
  }
  alignas(64) float tmp[16][16];
  for (int64_t c0 = 0; c0 < nc; c0 += 16) {
    float* dst = bp + (c0 / kNR) * kc * kNR + (c0 % kNR);
    for (int64_t kb = 0; kb < kc; kb += 16) {
      for (int j = 0; j < 16; ++j) _mm512_store_ps(tmp[j], load16(w + ((n0 + c0 + j) * K + k0) * es, dt, kb));
      for (int k = 0; k < 16; ++k) {
        const __m512i idx = _mm512_add_epi32(
            _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                               _mm512_set1_epi32(16)),
            _mm512_set1_epi32(k));
        _mm512_storeu_ps(dst + (kb + k) * kNR, _mm512_i32gather_ps(idx, &tmp[0][0], 4));
      }
    }
  }
}

template <int MR>
NIBBLE_AVX512 void kernel_f32(const float* x, int64_t ldx, const float* strip, int64_t kc, float* out,
                              int64_t ldo, int64_t ncols, bool accumulate) {
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(strip + k * kNR), b1 = _mm512_loadu_ps(strip + k * kNR + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(x[i * ldx + k]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  const __mmask16 m0 = ncols >= 16 ? __mmask16(0xffff) : __mmask16((1u << ncols) - 1);
  const __mmask16 m1 = ncols >= 32   ? __mmask16(0xffff)
                       : ncols <= 16 ? 0
                                     : __mmask16((1u << (ncols - 16)) - 1);
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    float* o = out + i * ldo;
    if (accumulate) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, o));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, o + 16));
    }
    _mm512_mask_storeu_ps(o, m0, acc[i][0]);
    _mm512_mask_storeu_ps(o + 16, m1, acc[i][1]);
  }
}

template <int MR>
NIBBLE_AVX512 void strips_f32(const float* x, int64_t ldx, const float* bp, int64_t nc, int64_t kc,
                              float* out, int64_t ldo, bool accumulate) {
  for (int64_t s = 0; s * kNR < nc; ++s)
    kernel_f32<MR>(x, ldx, bp + s * kc * kNR, kc, out + s * kNR, ldo, std::min(kNR, nc - s * kNR),
                   accumulate);
}

// out[:, 0:nc) (+)= x[:, k0:k0+kc) · (packed panel), all M rows.
NIBBLE_AVX512 void rows_f32(const float* x, int64_t M, int64_t K, const float* bp, int64_t nc, int64_t kc,
                            float* out, int64_t ldo, bool accumulate) {
  for (int64_t m0 = 0; m0 < M; m0 += kMR) {
    const float* xs = x + m0 * K;
    float* o = out + m0 * ldo;
    switch (std::min(kMR, M - m0)) {
#define NIBBLE_CASE(R)                                    \
  case R:                                                 \
    strips_f32<R>(xs, K, bp, nc, kc, o, ldo, accumulate); \
    break;
      NIBBLE_CASE(12)
      NIBBLE_CASE(11)
      NIBBLE_CASE(10)
      NIBBLE_CASE(9)
      NIBBLE_CASE(8)
      NIBBLE_CASE(7)
      NIBBLE_CASE(6)
      NIBBLE_CASE(5)
      NIBBLE_CASE(4)
      NIBBLE_CASE(3)
      NIBBLE_CASE(2)
      default:
        strips_f32<1>(xs, K, bp, nc, kc, o, ldo, accumulate);
        break;
#undef NIBBLE_CASE
    }
  }
}

// ---- bf16 -----------------------------------------------------------------------------------
// bp[strip][k / 2][32][2] = W[n0 + 32 strip + j][k0 + k] (bf16; zero past nc columns and past
// kc along K). False if the panel holds a bf16 subnormal.
bool pack_bf16(const char* w, int64_t K, int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint16_t* bp) {
  const int64_t kp = (kc + 1) / 2;
  const int64_t strips = (nc + kNR - 1) / kNR;
  uint16_t any_sub = 0;
  for (int64_t s = 0; s < strips; ++s) {
    uint16_t* dst = bp + s * kp * kNR * 2;
    for (int64_t j = 0; j < kNR; ++j) {
      const int64_t n = s * kNR + j;
      if (n >= nc) {
        for (int64_t p = 0; p < kp; ++p) dst[(p * kNR + j) * 2] = dst[(p * kNR + j) * 2 + 1] = 0;
        continue;
      }
      const uint16_t* row = reinterpret_cast<const uint16_t*>(w) + (n0 + n) * K + k0;
      for (int64_t k = 0; k < kc; ++k) {
        const uint16_t h = row[k];
        any_sub |= uint16_t(bf16_subnormal(h));
        dst[((k / 2) * kNR + j) * 2 + (k & 1)] = h;
      }
      if (kc & 1) dst[((kc / 2) * kNR + j) * 2 + 1] = 0;
    }
  }
  return !any_sub;
}

// The same, 16 columns x 32 k at a time through registers (2 x 16-bit words interleaved).
NIBBLE_AVX512BF16 bool pack_bf16_fast(const char* w, int64_t K, int64_t n0, int64_t nc, int64_t k0,
                                      int64_t kc, uint16_t* bp) {
  if (nc % 16 != 0 || kc % 32 != 0) return pack_bf16(w, K, n0, nc, k0, kc, bp);
  const int64_t kp = kc / 2;
  const int64_t strips = (nc + kNR - 1) / kNR;
  if (nc % kNR != 0) {  // zero the unused half strip
    uint16_t* dst = bp + (strips - 1) * kp * kNR * 2;
    for (int64_t p = 0; p < kp; ++p) _mm512_storeu_si512(dst + (p * kNR + 16) * 2, _mm512_setzero_si512());
  }
  __mmask32 sub = 0;
  const __m512i expo = _mm512_set1_epi16(0x7f80), mant = _mm512_set1_epi16(0x007f);
  alignas(64) uint32_t tmp[16][16];  // [column][k pair]
  for (int64_t c0 = 0; c0 < nc; c0 += 16) {
    uint16_t* dst = bp + (c0 / kNR) * kp * kNR * 2 + (c0 % kNR) * 2;
    for (int64_t kb = 0; kb < kc; kb += 32) {
      for (int j = 0; j < 16; ++j) {
        const __m512i v =
            _mm512_loadu_si512(reinterpret_cast<const uint16_t*>(w) + (n0 + c0 + j) * K + k0 + kb);
        sub |= _mm512_testn_epi16_mask(v, expo) & _mm512_test_epi16_mask(v, mant);
        _mm512_store_si512(tmp[j], v);
      }
      const __m512i idx = _mm512_mullo_epi32(
          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(16));
      for (int p = 0; p < 16; ++p)  // pair p of 16 columns
        _mm512_storeu_si512(
            dst + ((kb / 2 + p) * kNR) * 2,
            _mm512_i32gather_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(p)), &tmp[0][0], 4));
    }
  }
  return sub == 0;
}

// xa[i][k / 2][2] = x[i][k] as bf16 bits (x holds bf16 values, so truncation is exact), the
// last pair zero padded when K is odd.
NIBBLE_AVX512 void pack_x_bf16(const float* x, int64_t M, int64_t K, uint32_t* xa) {
  const int64_t kp = (K + 1) / 2;
  for (int64_t i = 0; i < M; ++i) {
    const float* xr = x + i * K;
    uint16_t* dst = reinterpret_cast<uint16_t*>(xa + i * kp);
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(dst + k),
          _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(xr + k)), 16)));
    for (; k < K; ++k) {
      uint32_t u;
      std::memcpy(&u, xr + k, 4);
      dst[k] = uint16_t(u >> 16);
    }
    if (K & 1) dst[K] = 0;
  }
}

template <int MR>
NIBBLE_AVX512BF16 void kernel_bf16(const uint32_t* ap, int64_t lda, int64_t kp, const uint16_t* strip,
                                   float* out, int64_t ldo, int64_t ncols, bool accumulate) {
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512i b0 = _mm512_loadu_si512(strip + p * kNR * 2),
                  b1 = _mm512_loadu_si512(strip + p * kNR * 2 + 32);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_set1_epi32(int(ap[i * lda + p]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)a, (__m512bh)b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)a, (__m512bh)b1);
    }
  }
  const __mmask16 m0 = ncols >= 16 ? __mmask16(0xffff) : __mmask16((1u << ncols) - 1);
  const __mmask16 m1 = ncols >= 32   ? __mmask16(0xffff)
                       : ncols <= 16 ? 0
                                     : __mmask16((1u << (ncols - 16)) - 1);
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    float* o = out + i * ldo;
    if (accumulate) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, o));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, o + 16));
    }
    _mm512_mask_storeu_ps(o, m0, acc[i][0]);
    _mm512_mask_storeu_ps(o + 16, m1, acc[i][1]);
  }
}

template <int MR>
NIBBLE_AVX512BF16 void strips_bf16(const uint32_t* ap, int64_t lda, int64_t kp, const uint16_t* bp,
                                   int64_t nc, float* out, int64_t ldo, bool accumulate) {
  for (int64_t s = 0; s * kNR < nc; ++s)
    kernel_bf16<MR>(ap, lda, kp, bp + s * kp * kNR * 2, out + s * kNR, ldo, std::min(kNR, nc - s * kNR),
                    accumulate);
}

// out[:, 0:nc) (+)= xa[:, pairs of this K slice] · (packed panel), all M rows; lda: pairs per
// row of xa.
NIBBLE_AVX512BF16 void rows_bf16(const uint32_t* xa, int64_t M, int64_t lda, const uint16_t* bp, int64_t nc,
                                 int64_t kc, float* out, int64_t ldo, bool accumulate) {
  const int64_t kp = (kc + 1) / 2;
  for (int64_t m0 = 0; m0 < M; m0 += kMR) {
    const uint32_t* ap = xa + m0 * lda;
    float* o = out + m0 * ldo;
    switch (std::min(kMR, M - m0)) {
#define NIBBLE_CASE(R)                                       \
  case R:                                                    \
    strips_bf16<R>(ap, lda, kp, bp, nc, o, ldo, accumulate); \
    break;
      NIBBLE_CASE(12)
      NIBBLE_CASE(11)
      NIBBLE_CASE(10)
      NIBBLE_CASE(9)
      NIBBLE_CASE(8)
      NIBBLE_CASE(7)
      NIBBLE_CASE(6)
      NIBBLE_CASE(5)
      NIBBLE_CASE(4)
      NIBBLE_CASE(3)
      NIBBLE_CASE(2)
      default:
        strips_bf16<1>(ap, lda, kp, bp, nc, o, ldo, accumulate);
        break;
#undef NIBBLE_CASE
    }
  }
}

}  // namespace

NIBBLE_AVX512 bool has_bf16_subnormal(const float* x, int64_t n) {
  const __m512i exp = _mm512_set1_epi32(0x7f800000), man = _mm512_set1_epi32(0x007f0000);
  __mmask16 any = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {  // the high 16 bits of each value: exponent zero, mantissa not
    const __m512i v = _mm512_loadu_si512(x + i);
    any |= _mm512_testn_epi32_mask(v, exp) & _mm512_test_epi32_mask(v, man);
  }
  if (any) return true;
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    if (bf16_subnormal(uint16_t(u >> 16))) return true;
  }
  return false;
}

void gemm_packed(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                 int64_t ldo, bool bf16) {
  static thread_local std::vector<float> bpf;     // [kNC / 32][kKC][32] the fp32 panel
  static thread_local std::vector<uint16_t> bph;  // [kNC / 32][kKC / 2][32][2] the bf16 panel
  static thread_local std::vector<uint32_t> xa;   // [M, (K + 1) / 2] x as bf16 pairs
  bf16 = bf16 && wdt == DType::BF16;
  const int64_t lda = (K + 1) / 2;
  if (bf16) {
    xa.resize(size_t(M * lda));
    pack_x_bf16(x, M, K, xa.data());
  }
  const char* wc = static_cast<const char*>(w);
  for (int64_t n0 = 0; n0 < N; n0 += kNC) {
    const int64_t nc = std::min(kNC, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      if (bf16) {
        bph.resize(size_t(kNC * (kKC + 1)));
        if (pack_bf16_fast(wc, K, n0, nc, k0, kc, bph.data())) {
          rows_bf16(xa.data() + k0 / 2, M, lda, bph.data(), nc, kc, out + n0, ldo, k0 > 0);
          continue;
        }
      }
      bpf.resize(size_t(kNC * kKC));
      pack_f32_fast(wc, wdt, K, n0, nc, k0, kc, bpf.data());
      rows_f32(x + k0, M, K, bpf.data(), nc, kc, out + n0, ldo, k0 > 0);
    }
  }
}

}  // namespace nibble::cpu::avx512
