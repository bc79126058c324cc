// AVX2 + FMA GEMM for many rows of x (prefill): out[M, N] = x[M, K] · W[N, K]^T with W in
// f32/f16/bf16. The classic packed scheme (Goto/BLIS): a panel of W (NC columns x KC of K)
// is widened to f32 and transposed once into 16-column strips, [strip][k][16], then a 6 x 16
// register tile runs over the whole panel for every 6 rows of x: per k, two strip loads and
// six broadcasts of x feed 12 FMAs into 12 accumulators (12 of the 16 ymm registers). The
// panel (NC x KC x 4 B = 128 KiB) stays in L2 while all row blocks of x pass over it, so W is
// read from memory once per call. Per-function target attributes; callers check AVX2.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backends/cpu/linear_cpu.h"

#define NIBBLE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace nibble::cpu::avx2 {

namespace {

constexpr int64_t kMR = 6, kNR = 16, kKC = 256, kNC = 128;

// 8 consecutive elements of a row of W widened to f32.
NIBBLE_AVX2 inline __m256 load8(const char* w, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32:
      return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + i);
    case DType::F16:
      return _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(w) + i)));
    default: {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(w) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
}

inline float load1(const char* w, DType dt, int64_t i) {
  return load_as_f32(w, dt, i);
}

// In-register 8 x 8 transpose.
NIBBLE_AVX2 inline void transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m256 u[8];
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// bp[strip][k][16] = W[n0 + 16 strip + j][k0 + k] as f32 (zero past the nc valid columns).
NIBBLE_AVX2 void pack_panel(const char* w, DType dt, int64_t K, int64_t n0, int64_t nc, int64_t k0,
                            int64_t kc, float* bp) {
  const int64_t es = dtype_bits(dt) / 8;
  const int64_t strips = (nc + kNR - 1) / kNR;
  for (int64_t g = 0; g < strips * 2; ++g) {  // groups of 8 columns
    float* dst = bp + (g / 2) * kc * kNR + (g % 2) * 8;
    const int64_t c0 = g * 8, valid = std::clamp<int64_t>(nc - c0, 0, 8);
    const char* rows[8];
    for (int j = 0; j < 8; ++j)  // rows past the valid ones are never read; point them at a valid one
      rows[j] = valid > 0 ? w + ((n0 + c0 + std::min<int64_t>(j, valid - 1)) * K + k0) * es : w;
    int64_t k = 0;
    if (valid == 8) {
      for (; k + 8 <= kc; k += 8) {
        __m256 r[8];
        for (int j = 0; j < 8; ++j) r[j] = load8(rows[j], dt, k);
        transpose8(r);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (k + j) * kNR, r[j]);
      }
    }
    for (; k < kc; ++k)
      for (int j = 0; j < 8; ++j) dst[k * kNR + j] = j < valid ? load1(rows[j], dt, k) : 0.0f;
  }
}

// out tile (MR rows x 16 columns, ncols valid) (+)= x rows . strip.
template <int MR>
NIBBLE_AVX2 void kernel(const float* x, int64_t ldx, const float* strip, int64_t kc, float* out, int64_t ldo,
                        int64_t ncols, bool accumulate) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(strip + k * kNR), b1 = _mm256_loadu_ps(strip + k * kNR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(x + i * ldx + k);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  if (ncols == kNR) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      float* o = out + i * ldo;
      if (accumulate) {
        acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(o));
        acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(o + 8));
      }
      _mm256_storeu_ps(o, acc[i][0]);
      _mm256_storeu_ps(o + 8, acc[i][1]);
    }
    return;
  }
  // a partial strip: through a buffer (the loop over i is unrolled so acc stays in registers)
  alignas(32) float tmp[MR][kNR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(tmp[i], acc[i][0]);
    _mm256_store_ps(tmp[i] + 8, acc[i][1]);
  }
  for (int i = 0; i < MR; ++i) {
    float* o = out + i * ldo;
    for (int64_t j = 0; j < ncols; ++j) o[j] = accumulate ? o[j] + tmp[i][j] : tmp[i][j];
  }
}

NIBBLE_AVX2 void rows_over_panel(const float* x, int64_t M, int64_t K, const float* bp, int64_t nc,
                                 int64_t kc, float* out, int64_t ldo, bool accumulate) {
  const int64_t strips = (nc + kNR - 1) / kNR;
  for (int64_t m0 = 0; m0 < M; m0 += kMR) {
    const int64_t mr = std::min(kMR, M - m0);
    for (int64_t s = 0; s < strips; ++s) {
      const float* xs = x + m0 * K;
      const float* st = bp + s * kc * kNR;
      float* o = out + m0 * ldo + s * kNR;
      const int64_t ncols = std::min(kNR, nc - s * kNR);
      switch (mr) {
        case 6:
          kernel<6>(xs, K, st, kc, o, ldo, ncols, accumulate);
          break;
        case 5:
          kernel<5>(xs, K, st, kc, o, ldo, ncols, accumulate);
          break;
        case 4:
          kernel<4>(xs, K, st, kc, o, ldo, ncols, accumulate);
          break;
        case 3:
          kernel<3>(xs, K, st, kc, o, ldo, ncols, accumulate);
          break;
        case 2:
          kernel<2>(xs, K, st, kc, o, ldo, ncols, accumulate);
          break;
        default:
          kernel<1>(xs, K, st, kc, o, ldo, ncols, accumulate);
          break;
      }
    }
  }
}

}  // namespace

NIBBLE_AVX2 void gemm_packed(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
                             float* out, int64_t ldo) {
  static thread_local std::vector<float> bp;  // [kNC / 16][kKC][16] the packed panel
  bp.resize(size_t(kNC * kKC));
  const char* wc = static_cast<const char*>(w);
  for (int64_t n0 = 0; n0 < N; n0 += kNC) {
    const int64_t nc = std::min(kNC, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      pack_panel(wc, wdt, K, n0, nc, k0, kc, bp.data());
      rows_over_panel(x + k0, M, K, bp.data(), nc, kc, out + n0, ldo, k0 > 0);
    }
  }
}

}  // namespace nibble::cpu::avx2
