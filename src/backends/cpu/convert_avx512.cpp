// AVX-512 float conversion (convert_rows' kernel): 16 values a step through f32, which holds
// every f16 and bf16 value exactly. f32 -> f16 is vcvtps2ph rounding to nearest even (what
// f32_to_f16 computes: overflow to inf, subnormal results rounded, a NaN quieted with its top
// payload bits kept); f32 -> bf16 is f32_to_bf16's integer rounding (nearest even, a NaN
// quieted by setting bit 6), done with AVX-512 F integer ops so no BF16 extension is needed.
// GCC 12's AVX-512 headers start intrinsics from _mm512_undefined_*() values, which -Wall
// reports as uninitialized (GCC PR 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "backends/cpu/avx512_common.h"
#include "backends/cpu/nn_cpu.h"

#define NIBBLE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace nibble::cpu::avx512 {

namespace {

NIBBLE_AVX512 inline void store16(void* p, DType dt, int64_t i, __mmask16 mk, __m512 v) {
  switch (dt) {
    case DType::F32:
      _mm512_mask_storeu_ps(static_cast<float*>(p) + i, mk, v);
      return;
    case DType::F16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, mk,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    default: {  // BF16
      const __m512i u = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i r =
          _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, mk, _mm512_cvtepi32_epi16(r));
      return;
    }
  }
}

}  // namespace

NIBBLE_AVX512 void convert_span(const void* src, DType sdt, void* dst, DType ddt, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    store16(dst, ddt, i, mk, load16(src, sdt, i, mk));
  }
}

}  // namespace nibble::cpu::avx512
