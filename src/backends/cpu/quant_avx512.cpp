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

#include "backends/cpu/quant_cpu.h"
#include "quant/gpu_float.h"

#define NIBBLE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace nibble::cpu::avx512 {

namespace {

NIBBLE_AVX512 inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

NIBBLE_AVX512 inline __m512 load_f16(const uint16_t* p, __mmask16 mk) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, p));
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

NIBBLE_AVX512 void f32_to_f16_rows(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = lanes(n - i);
    _mm256_mask_storeu_epi16(
        out + i, mk,
        _mm512_cvtps_ph(_mm512_maskz_loadu_ps(mk, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

}  // namespace nibble::cpu::avx512
