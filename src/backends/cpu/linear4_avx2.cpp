// AVX2 + FMA + F16C kernels for bitsandbytes 4-bit weights (per-function target attributes;
// callers check use_avx2_kernels()). Main idea: a weight's value depends only on its 4-bit
// code and its block, so per block we build the 16 final values (code * absmax, flush-to-zero,
// rounded to the compute dtype: exactly dequantize_4bit's) once, and decode by table lookup.
//
// dequant_4bit_span: 8 codes per step, two 8-lane permutes of the table + a blend.
// gemv_4bit: 32 codes per step with byte shuffles. The table's f32 bit patterns are cut into
// byte planes (plane k = byte k of the 16 values, 16 bytes, both 128-bit lanes), vpshufb looks
// up 32 codes in a plane at once, and byte/word unpacks reassemble the f32 values:
//
//   16 packed bytes P, broadcast to both lanes; lane 0: P >> 4 (even elements 0, 2, .., 30),
//   lane 1: P & 15 (odd elements 1, 3, .., 31). After the lookups and unpacks the four
//   result vectors hold elements 8g + [0 2 4 6 1 3 5 7], g = 0..3 ("pair order").
//
// The dot product does not care about order, so x is rearranged once per call into pair
// order (gemv_4bit_pack_x). BF16 values have zero low bytes: two planes suffice. F16 values
// are 16-bit too but F16C converts lanes in natural order, so that mode interleaves the codes
// into natural order first and x stays as it is.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backends/cpu/linear_cpu.h"
#include "nibble/quant.h"
#include "quant/gpu_float.h"

#define NIBBLE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace nibble::cpu::avx2 {

namespace {

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
// normal or zero), rounded to dt and kept as exact f32: lo = values 0..7, hi = 8..15.
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

// The values of the 8 codes in 4 packed bytes, natural order: each byte duplicated, even lanes
// shifted right by 4, then two 8-lane permutes blended on bit 3 of the code.
NIBBLE_AVX2 inline __m256 lookup8(const uint8_t* src, __m256 lo_tab, __m256 hi_tab) {
  const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
  uint32_t four;
  std::memcpy(&four, src, 4);
  __m128i bytes = _mm_shuffle_epi8(_mm_cvtsi32_si128(int(four)), dup);
  __m256i idx =
      _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(bytes), shifts), _mm256_set1_epi32(15));
  __m256 lo = _mm256_permutevar8x32_ps(lo_tab, idx), hi = _mm256_permutevar8x32_ps(hi_tab, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

enum Mode { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Byte planes of the 16 table values (each plane's 16 bytes in both lanes).
struct Planes {
  __m256i p[4];
};

NIBBLE_AVX2 inline Planes make_planes_f32(__m256 lo, __m256 hi) {
  // per lane: gather bytes by plane -> 4 dwords [P0 P1 P2 P3] of 4 values each; then a 4x4
  // transpose of dwords across the lanes of lo and hi.
  const __m256i by_plane = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i a = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_castps_si256(lo), by_plane), order);
  __m256i b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_castps_si256(hi), by_plane), order);
  // a = [P0(0..7) P1(0..7) P2(0..7) P3(0..7)] as qwords, b the same for values 8..15
  __m256i p02 = _mm256_unpacklo_epi64(a, b), p13 = _mm256_unpackhi_epi64(a, b);
  Planes r;
  r.p[0] = _mm256_permute2x128_si256(p02, p02, 0x00);
  r.p[1] = _mm256_permute2x128_si256(p13, p13, 0x00);
  r.p[2] = _mm256_permute2x128_si256(p02, p02, 0x11);
  r.p[3] = _mm256_permute2x128_si256(p13, p13, 0x11);
  return r;
}

NIBBLE_AVX2 inline Planes make_planes_f16(__m256 lo, __m256 hi) {
  const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  __m128i a = _mm_shuffle_epi8(_mm256_cvtps_ph(lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), split);
  __m128i b = _mm_shuffle_epi8(_mm256_cvtps_ph(hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), split);
  Planes r;
  r.p[0] = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(a, b));  // low bytes of the f16 values
  r.p[1] = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(a, b));  // high bytes
  r.p[2] = r.p[3] = _mm256_setzero_si256();
  return r;
}

// 32 weights from 16 packed bytes -> w[0..3] (pair order for F32/BF16, natural for F16).
template <int MODE>
NIBBLE_AVX2 inline void lookup32(const uint8_t* src, const Planes& t, __m256 w[4]) {
  const __m256i low4 = _mm256_set1_epi8(15);
  if constexpr (MODE == kF16) {
    __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(p, 4), _mm256_castsi256_si128(low4));
    __m128i lo = _mm_and_si128(p, _mm256_castsi256_si128(low4));
    __m256i idx = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));  // natural order
    __m256i b0 = _mm256_shuffle_epi8(t.p[0], idx), b1 = _mm256_shuffle_epi8(t.p[1], idx);
    __m256i h_lo = _mm256_unpacklo_epi8(b0, b1), h_hi = _mm256_unpackhi_epi8(b0, b1);
    w[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(h_lo));       // 0..7
    w[1] = _mm256_cvtph_ps(_mm256_castsi256_si128(h_hi));       // 8..15
    w[2] = _mm256_cvtph_ps(_mm256_extracti128_si256(h_lo, 1));  // 16..23
    w[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(h_hi, 1));  // 24..31
  } else {
    __m256i p = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(p, _mm256_setr_epi32(4, 4, 4, 4, 0, 0, 0, 0)), low4);
    __m256i b2 = _mm256_shuffle_epi8(t.p[2], idx), b3 = _mm256_shuffle_epi8(t.p[3], idx);
    __m256i u_lo = _mm256_unpacklo_epi8(b2, b3), u_hi = _mm256_unpackhi_epi8(b2, b3);  // upper 16 bits
    __m256i l_lo = _mm256_setzero_si256(), l_hi = l_lo;                                // lower 16 bits
    if constexpr (MODE == kF32) {
      __m256i b0 = _mm256_shuffle_epi8(t.p[0], idx), b1 = _mm256_shuffle_epi8(t.p[1], idx);
      l_lo = _mm256_unpacklo_epi8(b0, b1);
      l_hi = _mm256_unpackhi_epi8(b0, b1);
    }
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l_lo, u_lo));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l_lo, u_lo));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l_hi, u_hi));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l_hi, u_hi));
  }
}

// out[m * ldo + r] = x[m] . row(r0 + r); x already in the mode's order (gemv_4bit_pack_x).
template <int MODE, int MR>
NIBBLE_AVX2 void gemv_t(const float* x, int64_t K, const uint8_t* packed, const float* absmax,
                        int64_t blocksize, const float* code, DType cdt, int64_t r0, int64_t nrows,
                        float* out, int64_t ldo) {
  constexpr int NA = MR == 1 ? 4 : 2;  // accumulators per row: enough independent FMA chains
  const __m256i pair_order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t r = 0; r < nrows; ++r) {
    __m256 acc[MR][NA];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int a = 0; a < NA; ++a) acc[m][a] = _mm256_setzero_ps();
    const int64_t base = (r0 + r) * K;  // element index of the row start (a multiple of 8)
    for (int64_t k = 0; k < K;) {
      const int64_t b = (base + k) / blocksize;
      const int64_t seg = std::min(K, (b + 1) * blocksize - base);  // end of this block in the row
      __m256 lo_tab, hi_tab;
      block_table(code, absmax[b], cdt, lo_tab, hi_tab);
      const Planes t = MODE == kF16 ? make_planes_f16(lo_tab, hi_tab) : make_planes_f32(lo_tab, hi_tab);
      const uint8_t* src = packed + (base + k) / 2;
      for (; k + 32 <= seg; k += 32, src += 16) {
        __m256 w[4];
        lookup32<MODE>(src, t, w);
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
          for (int g = 0; g < 4; ++g)
            acc[m][g % NA] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k + 8 * g), w[g], acc[m][g % NA]);
      }
      for (; k < seg; k += 8, src += 4) {  // groups of 8 left in the block (a segment is a multiple of 8)
        __m256 w = lookup8(src, lo_tab, hi_tab);
        if constexpr (MODE != kF16) w = _mm256_permutevar8x32_ps(w, pair_order);
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m)
          acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), w, acc[m][0]);
      }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      __m256 s = acc[m][0];
#pragma GCC unroll 4
      for (int a = 1; a < NA; ++a) s = _mm256_add_ps(s, acc[m][a]);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      out[m * ldo + r] = _mm_cvtss_f32(h);
    }
  }
}

template <int MODE>
NIBBLE_AVX2 void gemv_mode(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax,
                           int64_t blocksize, const float* code, DType cdt, int64_t r0, int64_t nrows,
                           float* out, int64_t ldo) {
  switch (M) {
    case 1:
      gemv_t<MODE, 1>(x, K, packed, absmax, blocksize, code, cdt, r0, nrows, out, ldo);
      break;
    case 2:
      gemv_t<MODE, 2>(x, K, packed, absmax, blocksize, code, cdt, r0, nrows, out, ldo);
      break;
    case 3:
      gemv_t<MODE, 3>(x, K, packed, absmax, blocksize, code, cdt, r0, nrows, out, ldo);
      break;
    default:
      gemv_t<MODE, 4>(x, K, packed, absmax, blocksize, code, cdt, r0, nrows, out, ldo);
      break;
  }
}

}  // namespace

void gemv_4bit_pack_x(const float* x, int64_t M, int64_t K, DType compute_dtype, float* xp) {
  static constexpr int kPairOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int64_t i = 0; i < M * K; i += 8)
    for (int l = 0; l < 8; ++l) xp[i + l] = compute_dtype == DType::F16 ? x[i + l] : x[i + kPairOrder[l]];
}

NIBBLE_AVX2 void gemv_4bit(const float* xp, int64_t M, int64_t K, const uint8_t* packed, const float* absmax,
                           int64_t blocksize, DType quant_type, DType compute_dtype, int64_t r0,
                           int64_t nrows, float* out, int64_t ldo) {
  const float* code = dequant_table_4bit(quant_type);
  switch (compute_dtype) {
    case DType::F32:
      gemv_mode<kF32>(xp, M, K, packed, absmax, blocksize, code, compute_dtype, r0, nrows, out, ldo);
      break;
    case DType::BF16:
      gemv_mode<kBF16>(xp, M, K, packed, absmax, blocksize, code, compute_dtype, r0, nrows, out, ldo);
      break;
    default:
      gemv_mode<kF16>(xp, M, K, packed, absmax, blocksize, code, compute_dtype, r0, nrows, out, ldo);
      break;
  }
}

NIBBLE_AVX2 void dequant_4bit_span(const uint8_t* packed, float absmax, DType quant_type, int64_t e,
                                   int64_t count, void* out, DType out_dt) {
  __m256 lo_tab, hi_tab;
  block_table(dequant_table_4bit(quant_type), absmax, out_dt, lo_tab, hi_tab);
  const uint8_t* src = packed + e / 2;
  for (int64_t i = 0; i < count; i += 8) {
    const __m256 v = lookup8(src + i / 2, lo_tab, hi_tab);
    switch (out_dt) {
      case DType::F32:
        _mm256_storeu_ps(static_cast<float*>(out) + i, v);
        break;
      case DType::F16:
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        break;
      default: {  // BF16: values are exact bf16 already, keep the upper halves
        __m256i h = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0b1000);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i),
                         _mm256_castsi256_si128(p));
        break;
      }
    }
  }
}

}  // namespace nibble::cpu::avx2
