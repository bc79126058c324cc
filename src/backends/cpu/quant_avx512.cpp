// AVX-512 + F16C row pass of LLM.int8's activation quantization (int8_vectorwise_quant), 16
// values per step with the reference's exact arithmetic: |f16 value| widened to f32, the row
// absmax over the values below the threshold (fmax semantics: a NaN is skipped, as vmaxps
// does with the NaN in its first operand), then per value the flushed product with
// 127 * rcp_approx(absmax) (scalar, once per row), rounded half to even, NaN to 0, and 0 for
// the values at or above the threshold. The caller zeroes outlier columns across rows.
// GCC 12's AVX-512 headers start intrinsics from _mm512_undefined_*() values, which -Wall
// reports as uninitialized (GCC PR 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstring>

#include "backends/cpu/avx512_common.h"
#include "backends/cpu/quant_cpu.h"
#include "nibble/quant.h"
#include "quant/gpu_float.h"
#include "quant/reference.h"

#define NIBBLE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define NIBBLE_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

namespace nibble::cpu::avx512 {

namespace {

NIBBLE_AVX512 inline __m512 load_f16(const uint16_t* p, __mmask16 mk) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, p));
}

// Number of sorted boundaries strictly below v (v > b), by a 4-step binary search over the
// 15 boundaries in one register: the count quantize_nf4 takes (a NaN compares false: 0).
NIBBLE_AVX512 inline __m512i codes_nf4(__m512 v, __m512 bounds) {
  __m512i c = _mm512_setzero_si512();
  for (int s = 8; s >= 1; s >>= 1) {
    const __m512 b = _mm512_permutexvar_ps(_mm512_add_epi32(c, _mm512_set1_epi32(s - 1)), bounds);
    c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(v, b, _CMP_GT_OQ), c, _mm512_set1_epi32(s));
  }
  return c;
}

// FP4: the magnitude's bin (7 boundaries, counted), its E2M1 code, the sign bit for v < 0.
NIBBLE_AVX512 inline __m512i codes_fp4(__m512 v) {
  const __m512 a = _mm512_abs_ps(v);
  __m512i bin = _mm512_setzero_si512();
  for (float b : quant::ref::kFp4Boundaries)
    bin = _mm512_mask_add_epi32(bin, _mm512_cmp_ps_mask(a, _mm512_set1_ps(b), _CMP_GT_OQ), bin,
                                _mm512_set1_epi32(1));
  const auto& t = quant::ref::kFp4BinCode;
  const __m512i table =
      _mm512_setr_epi32(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i code = _mm512_permutexvar_epi32(bin, table);
  return _mm512_mask_or_epi32(code, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), code,
                              _mm512_set1_epi32(8));
}

}  // namespace

NIBBLE_AVX512 void int8_quant_rows(const uint16_t* a, int64_t rows, int64_t cols, float threshold, int8_t* ca,
                                   float* sca, uint8_t* outlier_flags) {
  const bool sparse = threshold > 0.0f;
  const __m512 thr = _mm512_set1_ps(threshold);
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m128i ones = _mm_set1_epi8(1);
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* row = a + r * cols;
    __m512 mx = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 mk = lanes(cols - c);
      const __m512 v = _mm512_and_ps(load_f16(row + c, mk), sign);
      __mmask16 keep = mk;
      if (sparse) {
        const __mmask16 out = _mm512_mask_cmp_ps_mask(mk, v, thr, _CMP_GE_OQ);
        _mm_mask_storeu_epi8(outlier_flags + c, out, ones);
        keep = mk & ~out;
      }
      mx = _mm512_mask_max_ps(mx, keep, v, mx);  // NaN in v: mx kept (fmax)
    }
    const float m = _mm512_reduce_max_ps(mx);
    sca[r] = m;
    const float scale = quant::mul_ftz(127.0f, quant::rcp_approx(m));
    const __m512 sv = _mm512_set1_ps(scale);
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 mk = lanes(cols - c);
      const __m512 v = load_f16(row + c, mk);  // f16 values are never f32 subnormals
      __m512 s = _mm512_mul_ps(v, sv);
      const __mmask16 sub = _mm512_fpclass_ps_mask(s, 0x20);  // flush subnormal products
      s = _mm512_mask_mov_ps(s, sub, _mm512_setzero_ps());
      __mmask16 zero = _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q);
      if (sparse) zero |= _mm512_cmp_ps_mask(_mm512_and_ps(v, sign), thr, _CMP_GE_OQ);
      __m512i q = _mm512_cvt_roundps_epi32(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_mask_mov_epi32(q, zero, _mm512_setzero_si512());
      _mm_mask_storeu_epi8(ca + r * cols + c, mk, _mm512_cvtepi32_epi8(q));
    }
  }
}

NIBBLE_AVX512 void quantize_4bit_block(const void* x, DType dt, int64_t begin, int64_t count,
                                       DType quant_type, uint8_t* packed, float* absmax_out) {
  // As avx2::quantize_4bit_block, 16 values a step: max(|x|, m) skips a NaN as fmaxf does.
  __m512 m = _mm512_set1_ps(-3.402823466e38f);
  for (int64_t i = 0; i < count; i += 16)
    m = _mm512_max_ps(_mm512_abs_ps(ftz16(load16(x, dt, begin + i))), m);
  const float amax = _mm512_reduce_max_ps(m);
  *absmax_out = amax;
  const __m512 inv = _mm512_set1_ps(quant::rcp_approx(amax));
  float b16[16] = {};
  std::memcpy(b16, quant::ref::kNf4Boundaries, sizeof quant::ref::kNf4Boundaries);
  const __m512 bounds = _mm512_loadu_ps(b16);
  const bool nf4 = quant_type == DType::NF4;
  uint8_t* dst = packed + begin / 2;
  for (int64_t i = 0; i < count; i += 16) {
    const __m512 v = ftz16(_mm512_mul_ps(ftz16(load16(x, dt, begin + i)), inv));
    const __m512i c = nf4 ? codes_nf4(v, bounds) : codes_fp4(v);
    // (even << 4) | odd in the low dword of each qword, then one byte per qword.
    const __m512i p = _mm512_or_si512(_mm512_slli_epi64(c, 4), _mm512_srli_epi64(c, 32));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i / 2), _mm512_cvtepi64_epi8(p));
  }
}

NIBBLE_AVX512 void f32_to_f16_rows(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = lanes(n - i);
    _mm256_mask_storeu_epi16(
        out + i, mk,
        _mm512_cvtps_ph(_mm512_maskz_loadu_ps(mk, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// 32 values a step: 16 packed bytes split into high (even element) and low nibbles,
// interleaved back into element order, looked up in a 16-float table, scaled by the block's
// absmax and rounded to bf16 by vcvtne2ps2bf16: round to nearest even, NaN quieted with its
// sign (as f32_to_bf16), and subnormal inputs read as zero, which is mul_ftz's flush of a
// subnormal product (the test's absmax of 2e-38 checks it).
NIBBLE_AVX512BF16 void dequantize_4bit_bf16(const uint8_t* packed, const float* absmax, int64_t blocksize,
                                            DType quant_type, int64_t begin, int64_t count, uint16_t* out) {
  const __m512 lut = _mm512_loadu_ps(dequant_table_4bit(quant_type));
  const __m128i low4 = _mm_set1_epi8(0x0f);
  for (int64_t i = 0; i < count; i += 32) {
    const int64_t e = begin + i;
    const __m512 a = _mm512_set1_ps(quant::ftz(absmax[e / blocksize]));
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + e / 2));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4), lo = _mm_and_si128(bytes, low4);
    const __m512 v0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), lut);
    const __m512 v1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo)), lut);
    const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_mul_ps(v1, a), _mm512_mul_ps(v0, a));
    _mm512_storeu_si512(out + i, reinterpret_cast<__m512i>(h));
  }
}

}  // namespace nibble::cpu::avx512
