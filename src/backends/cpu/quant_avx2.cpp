// AVX2 + F16C kernels for blockwise 4-bit quantization. Compiled with per-function target
// attributes so the binary still runs on CPUs without AVX2 (has_avx2() guards every call).
//
// Quantize: 8 values per vector; absmax by max over |x| (max(x, acc) so a NaN input is skipped
// like fmaxf does); scale by the GPU's reciprocal with denormals flushed (gpu_float.h); code = number of boundaries strictly below
// (each compare yields -1 where true, subtracted from the count). FP4 maps the magnitude bin
// to its E2M1 code with a lane permute and ORs the sign (x < 0).
// Pack: codes sit in 32-bit lanes [c0 c1 | c2 c3 | ...]; per 64-bit lane (c0 << 4) | c1 is
// formed by shifts, then byte 0 of each 64-bit lane is gathered with a byte shuffle.
#include <immintrin.h>

#include <cstring>

#include "backends/cpu/quant_cpu.h"
#include "nibble/quant.h"
#include "quant/gpu_float.h"
#include "quant/reference.h"

#define NIBBLE_AVX2 __attribute__((target("avx2,f16c")))

namespace nibble::cpu::avx2 {

namespace {

NIBBLE_AVX2 inline __m256 load8(const void* x, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return _mm256_loadu_ps(static_cast<const float*>(x) + i);
    case DType::F16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i)));
    default: {  // BF16
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
}

// Flush-to-zero as the GPU's .ftz ops: |v| < FLT_MIN becomes a zero of the same sign (NaN kept).
NIBBLE_AVX2 inline __m256 ftz8(__m256 v) {
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(int(0x80000000u)));
  __m256 keep = _mm256_cmp_ps(_mm256_andnot_ps(sign, v), _mm256_set1_ps(1.17549435e-38f), _CMP_NLT_UQ);
  return _mm256_or_ps(_mm256_and_ps(v, keep), _mm256_and_ps(v, sign));
}

NIBBLE_AVX2 inline __m256i codes_nf4(__m256 v) {
  __m256i c = _mm256_setzero_si256();
  for (float b : quant::ref::kNf4Boundaries)
    c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_set1_ps(b), _CMP_GT_OQ)));
  return c;
}

NIBBLE_AVX2 inline __m256i codes_fp4(__m256 v) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 a = _mm256_and_ps(v, abs_mask);
  __m256i bin = _mm256_setzero_si256();
  for (float b : quant::ref::kFp4Boundaries)
    bin = _mm256_sub_epi32(bin, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(b), _CMP_GT_OQ)));
  const auto& t = quant::ref::kFp4BinCode;
  __m256i code = _mm256_permutevar8x32_epi32(_mm256_setr_epi32(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]), bin);
  __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_or_si256(code, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
}

// 8 codes (32-bit lanes) -> 4 packed bytes.
NIBBLE_AVX2 inline uint32_t pack8(__m256i c) {
  __m256i p = _mm256_or_si256(_mm256_slli_epi64(c, 4), _mm256_srli_epi64(c, 32));
  const __m256i sel = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                       0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  p = _mm256_shuffle_epi8(p, sel);
  uint32_t lo = uint32_t(_mm256_extract_epi16(p, 0)) & 0xffffu;
  uint32_t hi = uint32_t(_mm256_extract_epi16(p, 8)) & 0xffffu;
  return lo | (hi << 16);
}

NIBBLE_AVX2 inline void store8(void* out, DType dt, int64_t i, __m256 v) {
  switch (dt) {
    case DType::F32: _mm256_storeu_ps(static_cast<float*>(out) + i, v); return;
    case DType::F16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    default: {  // BF16, round to nearest even; NaN -> quiet NaN with the sign kept
      __m256i u = _mm256_castps_si256(v);
      __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
      __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
      __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
      r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(is_nan));
      // 32-bit lanes -> 16-bit: packus works per 128-bit half, so fix the order after.
      __m256i p = _mm256_packus_epi32(r, r);
      p = _mm256_permute4x64_epi64(p, 0b1000);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), _mm256_castsi256_si128(p));
      return;
    }
  }
}

}  // namespace

NIBBLE_AVX2 void quantize_4bit_block(const void* x, DType dt, int64_t begin, int64_t count, DType quant_type,
                                     uint8_t* packed, float* absmax_out) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_set1_ps(-3.402823466e38f);
  for (int64_t i = 0; i < count; i += 8) m = _mm256_max_ps(_mm256_and_ps(ftz8(load8(x, dt, begin + i)), abs_mask), m);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  float amax = _mm_cvtss_f32(m4);
  *absmax_out = amax;
  __m256 inv = _mm256_set1_ps(quant::rcp_approx(amax));
  uint8_t* dst = packed + begin / 2;
  const bool nf4 = quant_type == DType::NF4;
  for (int64_t i = 0; i < count; i += 8) {
    __m256 v = ftz8(_mm256_mul_ps(ftz8(load8(x, dt, begin + i)), inv));
    uint32_t b = pack8(nf4 ? codes_nf4(v) : codes_fp4(v));
    std::memcpy(dst + i / 2, &b, 4);
  }
}

NIBBLE_AVX2 void dequantize_4bit_run(const uint8_t* packed, float absmax, int64_t begin, int64_t count,
                                     DType quant_type, void* out, DType out_dt) {
  // 16-entry lookup with two 8-lane permutes and a blend on bit 3 of the code; the codes of 4
  // bytes are spread to 8 lanes as [b0>>4, b0&15, b1>>4, b1&15, ...] by duplicating each byte
  // and shifting even lanes right by 4.
  const float* code = dequant_table_4bit(quant_type);
  const __m256 lo_tab = _mm256_loadu_ps(code), hi_tab = _mm256_loadu_ps(code + 8);
  const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
  const __m256i low4 = _mm256_set1_epi32(15);
  __m256 am = _mm256_set1_ps(quant::ftz(absmax));
  const uint8_t* src = packed + begin / 2;
  for (int64_t i = 0; i < count; i += 8) {
    uint32_t four;
    std::memcpy(&four, src + i / 2, 4);
    __m128i bytes = _mm_shuffle_epi8(_mm_cvtsi32_si128(int(four)), dup);
    __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(bytes), shifts), low4);
    __m256 lo = _mm256_permutevar8x32_ps(lo_tab, idx), hi = _mm256_permutevar8x32_ps(hi_tab, idx);
    __m256 v = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    store8(out, out_dt, begin + i, ftz8(_mm256_mul_ps(v, am)));
  }
}

NIBBLE_AVX2 void quantize_blockwise8_run(const void* x, DType dt, int64_t begin, int64_t count, const float* code,
                                         float inv, uint8_t* q) {
  // quant::ref::quantize_dynamic on 8 lanes: the same 7-step search with gathers, the same
  // remembered neighbours and midpoint rule, blends instead of branches.
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 code0 = _mm256_set1_ps(code[0]), code255 = _mm256_set1_ps(code[255]);
  const __m256 half = _mm256_set1_ps(0.5f);
  for (int64_t i = 0; i < count; i += 8) {
    __m256 xv = ftz8(_mm256_mul_ps(ftz8(load8(x, dt, begin + i)), vinv));
    __m256i pivot = _mm256_set1_epi32(127), upper_p = _mm256_set1_epi32(255), lower_p = _mm256_setzero_si256();
    __m256 lower = _mm256_set1_ps(-1.0f), upper = _mm256_set1_ps(1.0f);
    __m256 val = _mm256_set1_ps(code[127]);
    for (int step = 64; step > 0; step >>= 1) {
      __m256 gt = _mm256_cmp_ps(xv, val, _CMP_GT_OQ);
      __m256i gti = _mm256_castps_si256(gt);
      lower_p = _mm256_blendv_epi8(lower_p, pivot, gti);
      lower = _mm256_blendv_ps(lower, val, gt);
      upper_p = _mm256_blendv_epi8(pivot, upper_p, gti);
      upper = _mm256_blendv_ps(val, upper, gt);
      __m256i st = _mm256_set1_epi32(step);
      pivot = _mm256_blendv_epi8(_mm256_sub_epi32(pivot, st), _mm256_add_epi32(pivot, st), gti);
      val = _mm256_i32gather_ps(code, pivot, 4);
    }
    upper = _mm256_blendv_ps(upper, code255,
                             _mm256_castsi256_ps(_mm256_cmpeq_epi32(upper_p, _mm256_set1_epi32(255))));
    lower = _mm256_blendv_ps(lower, code0, _mm256_castsi256_ps(_mm256_cmpeq_epi32(lower_p, _mm256_setzero_si256())));
    __m256 gt = _mm256_cmp_ps(xv, val, _CMP_GT_OQ);
    __m256 mid_up = _mm256_mul_ps(_mm256_add_ps(upper, val), half);
    __m256 mid_lo = _mm256_mul_ps(_mm256_add_ps(lower, val), half);
    __m256i take_up = _mm256_castps_si256(_mm256_cmp_ps(xv, mid_up, _CMP_GT_OQ));
    __m256i take_lo = _mm256_castps_si256(_mm256_cmp_ps(xv, mid_lo, _CMP_LT_OQ));
    __m256i r_gt = _mm256_blendv_epi8(pivot, upper_p, take_up);
    __m256i r_le = _mm256_blendv_epi8(pivot, lower_p, take_lo);
    __m256i r = _mm256_blendv_epi8(r_le, r_gt, _mm256_castps_si256(gt));
    // 8 x int32 (0..255) -> 8 bytes
    __m256i p16 = _mm256_packus_epi32(r, r);
    __m256i p8 = _mm256_packus_epi16(p16, p16);
    uint32_t lo = uint32_t(_mm256_extract_epi32(p8, 0)), hi = uint32_t(_mm256_extract_epi32(p8, 4));
    std::memcpy(q + begin + i, &lo, 4);
    std::memcpy(q + begin + i + 4, &hi, 4);
  }
}

}  // namespace nibble::cpu::avx2
