// AVX-512 4-bit GEMV (M <= 4): bitsandbytes NF4/FP4 rows decoded in registers by 16-entry
// table lookups, never written to memory. Per block the 16 final values (code * absmax,
// flush-to-zero, rounded to the compute dtype: exactly dequantize_4bit's) form the table; a
// whole table fits one zmm (16 f32) or half of one (16 bf16), so one permute decodes 16 or
// 32 weights. Two kernels:
//
//   f32 table (AVX-512 F/BW, any compute dtype): 16 packed bytes -> vpmovzxbd -> dwords d;
//     vpermps takes the low 4 bits of each index, so the dword itself indexes the odd element
//     2d+1 (low nibble) and dword >> 4 the even element 2d; vfmadd231ps with x.
//   bf16 table (AVX512_BF16, compute dtype bf16): 32 packed bytes -> vpmovzxbw -> words d;
//     vpermw (5-bit indices, so the low nibble is masked) decodes 32 bf16 weights per
//     permute, vdpbf16ps multiplies pairs of them by bf16 x. Products of two bf16 values are
//     exact in f32, so this differs from the f32 path only in summation order and in that
//     vdpbf16ps flushes subnormals (inputs and each result): x with a bf16 subnormal is sent
//     to the f32 path by the caller; a partial sum or product below 2^-126 in magnitude may
//     become zero (an absolute change under 2^-126, far below the summation-order error).
//
// Both decoders emit even elements then odd ones, so x is rearranged once per call into that
// order (gemv_4bit_pack_x). NR rows of W go through one pass so every x load serves NR rows
// and NR x MR x 2 independent accumulation chains hide the FMA latency.
// GCC 12's AVX-512 headers start intrinsics from _mm512_undefined_*() values, which -Wall
// reports as uninitialized (GCC PR 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/cpu/avx512_common.h"
#include "backends/cpu/linear_cpu.h"
#include "nibble/quant.h"
#include "quant/gpu_float.h"

#define NIBBLE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define NIBBLE_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

namespace nibble::cpu::avx512 {

namespace {

// Software prefetch distance along the packed weights, in bytes: one row group ahead (the
// same offset in row r + NR). A group's rows are short (K / 2 bytes: 1 KiB at K = 2048), too
// short for the hardware prefetcher to ramp up on each row's stream. Measured on the 2-core
// Xeon (one thread, 48 NF4 matrices of 8192 x 2048 cycled, thread CPU time): 4.8 GB/s without,
// 6.8 at 2 KiB, 7.7 at 4-12 KiB; the fixed 8 KiB used then is one group at K = 2048 but lands
// inside the same group at K = 8192 (4 KiB rows): one group ahead instead, Llama-3.2-1B decode
// with 2 threads (interleaved A/B) 17.7 / 17.7 -> 19.0 / 18.6 tok/s, with the dense GEMV's
// same change for the bf16 head.
inline int64_t prefetch_bytes(int64_t nr, int64_t K) {
  return nr * K / 2;
}

// |absmax| at least this: no product code * absmax is subnormal (the smallest nonzero code
// magnitude is FP4's 1/192) and absmax itself is normal, so flush-to-zero changes nothing.
constexpr float kNoFlushAbsmax = 1e-35f;

// code * absmax as quant::mul_ftz for all 16 codes.
NIBBLE_AVX512 inline __m512 scaled_codes(__m512 code, float absmax) {
  if (std::fabs(absmax) >= kNoFlushAbsmax) return _mm512_mul_ps(code, _mm512_set1_ps(absmax));
  return ftz16(_mm512_mul_ps(code, _mm512_set1_ps(quant::ftz(absmax))));
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

// The f32 table of one block: its 16 values rounded to dt, kept as exact f32.
NIBBLE_AVX512 inline __m512 table_f32(__m512 code, float absmax, DType dt) {
  __m512 t = scaled_codes(code, absmax);
  if (dt == DType::BF16) return round_bf16(t);
  if (dt == DType::F16)
    return _mm512_cvtph_ps(_mm512_cvtps_ph(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return t;
}

NIBBLE_AVX512 inline float hsum(__m512 v) {
  __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// Blocks whose absmax a row group caches (kMaxCached / NR per row): K = 8192 at blocksize 64.
constexpr int64_t kMaxCached = 1024;

// out[i] = absmax[b + i] for i < n, the double-quantized case decoded 16 blocks at a time
// (gathers of the code and absmax2 values; the same flushed product and add as Absmax4).
NIBBLE_AVX512 void absmax_run(const Absmax4& a, int64_t b, int64_t n, float* out) {
  if (!a.q) {
    std::memcpy(out, a.f32 + b, size_t(n) * sizeof(float));
    return;
  }
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, a.q + b + i));
    const __m512 c = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, q, a.code, 4);
    const __m512i j2 = _mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32(int(b + i)), iota), 8);
    const __m512 a2 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, j2, a.absmax2, 4);
    const __m512 v = ftz16(_mm512_mul_ps(ftz16(c), ftz16(a2)));
    _mm512_mask_storeu_ps(out + i, mk, _mm512_add_ps(v, _mm512_set1_ps(a.offset)));
  }
}

// Rows r0 .. r0 + NR of W (x in pack order, fp32: 32 elements per step). Every NR rows see
// block boundaries at the same offsets (the caller guarantees K % blocksize == 0 when NR > 1).
template <int MR, int NR>
NIBBLE_AVX512 void rows_f32(const float* xp, int64_t K, const uint8_t* packed, const Absmax4& absmax,
                            int64_t blocksize, __m512 code, DType cdt, int64_t row, float* out, int64_t ldo) {
  __m512 acc[MR][NR][2];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) acc[m][r][0] = acc[m][r][1] = _mm512_setzero_ps();
  // Row r's bytes start at w0 + r * rs (K is even, so rows start on whole bytes); its blocks
  // at absmax + b + r * bpr (NR > 1 only where K % blocksize == 0).
  const int64_t base = row * K, pf = prefetch_bytes(NR, K), rs = K / 2, bpr = K / blocksize;
  const uint8_t* w0 = packed + base / 2;
  // The group's absmax values decoded up front when its rows hold whole blocks (am[r * bpr + j]).
  alignas(64) float am[kMaxCached];
  const bool cached = K % blocksize == 0 && NR * bpr <= kMaxCached;
  if (cached)
    for (int r = 0; r < NR; ++r) absmax_run(absmax, base / blocksize + r * bpr, bpr, am + r * bpr);
  for (int64_t k = 0; k < K;) {
    const int64_t b = (base + k) / blocksize;
    const int64_t seg = std::min(K, (b + 1) * blocksize - base);
    __m512 tab[NR];
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r)
      tab[r] = table_f32(code, cached ? am[r * bpr + (b - base / blocksize)] : absmax[b + r * bpr], cdt);
    for (; k < seg; k += 32) {
      __m512 xv[MR][2];
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        xv[m][0] = _mm512_loadu_ps(xp + m * K + k);
        xv[m][1] = _mm512_loadu_ps(xp + m * K + k + 16);
      }
#pragma GCC unroll 16
      for (int r = 0; r < NR; ++r) {
        const uint8_t* src = w0 + r * rs + k / 2;
        if (pf && k % 128 == 0) _mm_prefetch(reinterpret_cast<const char*>(src + pf), _MM_HINT_T0);
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
        const __m512 w_even = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab[r]);
        const __m512 w_odd = _mm512_permutexvar_ps(idx, tab[r]);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          acc[m][r][0] = _mm512_fmadd_ps(xv[m][0], w_even, acc[m][r][0]);
          acc[m][r][1] = _mm512_fmadd_ps(xv[m][1], w_odd, acc[m][r][1]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) out[m * ldo + r] = hsum(_mm512_add_ps(acc[m][r][0], acc[m][r][1]));
}

// The bf16 table of one block (16 values in a ymm). vcvtneps2bf16 rounds to nearest even and
// quiets NaNs as f32_to_bf16; its input is flushed already and a normal f32 never rounds to a
// bf16 subnormal.
NIBBLE_AVX512BF16 inline __m256i table_bf16(__m512 code, float absmax) {
  const __m256bh t = _mm512_cvtneps_pbh(scaled_codes(code, absmax));
  __m256i ti;
  std::memcpy(&ti, &t, sizeof ti);
  return ti;
}

// tabs[i] = table_bf16(code, am[i]) for i < n. Where no |absmax| is below kNoFlushAbsmax (a
// vectorized check), two tables per vcvtne2ps2bf16 and one 64-byte store, without the
// per-block branch: the conversions were a quarter of the decode GEMV's time one at a time.
NIBBLE_AVX512BF16 void tables_bf16(__m512 code, const float* am, int64_t n, __m256i* tabs) {
  __mmask16 tiny = 0;
  const __m512 limit = _mm512_set1_ps(kNoFlushAbsmax);
  for (int64_t i = 0; i < n; i += 16) {  // NaN compares false: its table is the general one's
    const __mmask16 mk = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    tiny |= _mm512_mask_cmp_ps_mask(mk, _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, am + i)), limit, _CMP_LT_OQ);
  }
  int64_t i = 0;
  if (!tiny)
    for (; i + 2 <= n; i += 2) {
      const __m512bh t = _mm512_cvtne2ps_pbh(_mm512_mul_ps(code, _mm512_set1_ps(am[i + 1])),
                                             _mm512_mul_ps(code, _mm512_set1_ps(am[i])));
      _mm512_store_si512(tabs + i, reinterpret_cast<__m512i>(t));
    }
  for (; i < n; ++i) tabs[i] = table_bf16(code, am[i]);
}

// The same with bf16 tables and vdpbf16ps (xp: bf16 in pack order, 64 elements per step).
template <int MR, int NR>
NIBBLE_AVX512BF16 void rows_bf16(const uint16_t* xp, int64_t K, const uint8_t* packed, const Absmax4& absmax,
                                 int64_t blocksize, __m512 code, int64_t row, float* out, int64_t ldo) {
  __m512 acc[MR][NR][2];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) acc[m][r][0] = acc[m][r][1] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi16(15);
  const int64_t base = row * K, pf = prefetch_bytes(NR, K), rs = K / 2, bpr = K / blocksize;
  const uint8_t* w0 = packed + base / 2;  // as rows_f32
  // The group's tables built up front when its rows hold whole blocks (tabs[r * bpr + j]):
  // independent conversions that pipeline, where building each one just before its permutes
  // put the conversion's latency on every block's path.
  alignas(64) float am[kMaxCached];
  alignas(64) __m256i tabs[kMaxCached];
  const bool cached = K % blocksize == 0 && NR * bpr <= kMaxCached;
  if (cached) {
    for (int r = 0; r < NR; ++r) absmax_run(absmax, base / blocksize + r * bpr, bpr, am + r * bpr);
    tables_bf16(code, am, NR * bpr, tabs);
  }
  for (int64_t k = 0; k < K;) {
    const int64_t b = (base + k) / blocksize;
    const int64_t seg = std::min(K, (b + 1) * blocksize - base);
    __m512i tab[NR];
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r)  // upper half unused: indices are < 16
      tab[r] = _mm512_castsi256_si512(cached ? tabs[r * bpr + (b - base / blocksize)]
                                             : table_bf16(code, absmax[b + r * bpr]));
    for (; k < seg; k += 64) {
      __m512i xv[MR][2];
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        xv[m][0] = _mm512_loadu_si512(xp + m * K + k);
        xv[m][1] = _mm512_loadu_si512(xp + m * K + k + 32);
      }
#pragma GCC unroll 16
      for (int r = 0; r < NR; ++r) {
        const uint8_t* src = w0 + r * rs + k / 2;
        if (pf && k % 128 == 0) _mm_prefetch(reinterpret_cast<const char*>(src + pf), _MM_HINT_T0);
        const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
        const __m512i w_even = _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), tab[r]);
        const __m512i w_odd = _mm512_permutexvar_epi16(_mm512_and_si512(bytes, low4), tab[r]);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          acc[m][r][0] = _mm512_dpbf16_ps(acc[m][r][0], (__m512bh)xv[m][0], (__m512bh)w_even);
          acc[m][r][1] = _mm512_dpbf16_ps(acc[m][r][1], (__m512bh)xv[m][1], (__m512bh)w_odd);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) out[m * ldo + r] = hsum(_mm512_add_ps(acc[m][r][0], acc[m][r][1]));
}

// kNr rows from row r0 + r, in the input's dtype. (A function, not a lambda in gemv_t: clang
// does not give a lambda its enclosing function's target attribute, and __m512 arguments need it.)
template <int MR, int kNr, bool BF16>
NIBBLE_AVX512 inline void rows_at(const void* xp, int64_t K, const uint8_t* packed, const Absmax4& absmax,
                                  int64_t blocksize, __m512 code, DType cdt, int64_t row, float* out,
                                  int64_t ldo) {
  if constexpr (BF16)
    rows_bf16<MR, kNr>(static_cast<const uint16_t*>(xp), K, packed, absmax, blocksize, code, row, out, ldo);
  else
    rows_f32<MR, kNr>(static_cast<const float*>(xp), K, packed, absmax, blocksize, code, cdt, row, out, ldo);
}

// NR-row groups while they fit (and blocks line up across rows), then single rows.
template <int MR, int NR, bool BF16>
NIBBLE_AVX512 void gemv_t(const void* xp, int64_t K, const uint8_t* packed, const Absmax4& absmax,
                          int64_t blocksize, DType quant_type, DType cdt, int64_t r0, int64_t nrows,
                          float* out, int64_t ldo) {
  const __m512 code = _mm512_loadu_ps(dequant_table_4bit(quant_type));
  int64_t r = 0;
  if (K % blocksize == 0)
    for (; r + NR <= nrows; r += NR)
      rows_at<MR, NR, BF16>(xp, K, packed, absmax, blocksize, code, cdt, r0 + r, out + r, ldo);
  for (; r < nrows; ++r)
    rows_at<MR, 1, BF16>(xp, K, packed, absmax, blocksize, code, cdt, r0 + r, out + r, ldo);
}

template <bool BF16>
void gemv_m(const void* xp, int64_t M, int64_t K, const uint8_t* packed, const Absmax4& absmax,
            int64_t blocksize, DType quant_type, DType cdt, int64_t r0, int64_t nrows, float* out,
            int64_t ldo) {
  switch (M) {
    case 1:
      return gemv_t<1, 8, BF16>(xp, K, packed, absmax, blocksize, quant_type, cdt, r0, nrows, out, ldo);
    case 2:
      return gemv_t<2, 4, BF16>(xp, K, packed, absmax, blocksize, quant_type, cdt, r0, nrows, out, ldo);
    case 3:
      return gemv_t<3, 2, BF16>(xp, K, packed, absmax, blocksize, quant_type, cdt, r0, nrows, out, ldo);
    default:
      return gemv_t<4, 2, BF16>(xp, K, packed, absmax, blocksize, quant_type, cdt, r0, nrows, out, ldo);
  }
}

}  // namespace

NIBBLE_AVX512BF16 void dequantize_4bit_bf16_pack_order(const uint8_t* packed, const float* absmax,
                                                       int64_t blocksize, DType quant_type, int64_t begin,
                                                       int64_t count, uint16_t* out) {
  const __m512 code = _mm512_loadu_ps(dequant_table_4bit(quant_type));
  const __m512i low4 = _mm512_set1_epi16(15);
  constexpr int64_t kTables = 64;  // block tables built at a time (two per conversion)
  alignas(64) __m256i tabs[kTables];
  for (int64_t i0 = 0; i0 < count;) {
    const int64_t b0 = (begin + i0) / blocksize;
    const int64_t nb = std::min(kTables, (begin + count - 1) / blocksize - b0 + 1);
    tables_bf16(code, absmax + b0, nb, tabs);
    const int64_t i1 = std::min(count, (b0 + nb) * blocksize - begin);
    for (int64_t i = i0; i < i1; i += 64) {
      const int64_t e = begin + i;
      const __m512i tab = _mm512_castsi256_si512(tabs[e / blocksize - b0]);
      const __m512i bytes =
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed + e / 2)));
      _mm512_storeu_si512(out + i, _mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), tab));
      _mm512_storeu_si512(out + i + 32, _mm512_permutexvar_epi16(_mm512_and_si512(bytes, low4), tab));
    }
    i0 = i1;
  }
}

bool gemv_4bit_fits(int64_t M, int64_t K, int64_t blocksize, bool bf16) {
  const int64_t step = bf16 ? 64 : 32;
  return M >= 1 && M <= 4 && K % step == 0 && blocksize % step == 0;
}

bool gemv_4bit_pack_x(const float* x, int64_t M, int64_t K, bool bf16, void* xp) {
  const int64_t step = bf16 ? 64 : 32, half = step / 2;
  for (int64_t c = 0; c < M * K; c += step)
    for (int64_t d = 0; d < half; ++d)
      for (int64_t odd = 0; odd < 2; ++odd) {
        const float v = x[c + 2 * d + odd];
        if (!bf16) {
          static_cast<float*>(xp)[c + odd * half + d] = v;
          continue;
        }
        // x is bf16-exact already; vdpbf16ps would read a subnormal as zero
        if (v != 0.0f && std::fabs(v) < 1.17549435e-38f) return false;
        uint32_t u;
        std::memcpy(&u, &v, 4);
        static_cast<uint16_t*>(xp)[c + odd * half + d] = uint16_t(u >> 16);
      }
  return true;
}

void gemv_4bit(const void* xp, int64_t M, int64_t K, const uint8_t* packed, const Absmax4& absmax,
               int64_t blocksize, DType quant_type, DType compute_dtype, bool bf16, int64_t r0, int64_t nrows,
               float* out, int64_t ldo) {
  if (bf16)
    gemv_m<true>(xp, M, K, packed, absmax, blocksize, quant_type, compute_dtype, r0, nrows, out, ldo);
  else
    gemv_m<false>(xp, M, K, packed, absmax, blocksize, quant_type, compute_dtype, r0, nrows, out, ldo);
}

}  // namespace nibble::cpu::avx512
