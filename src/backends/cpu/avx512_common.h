// Small AVX-512 helpers shared by the *_avx512.cpp kernels: widening loads of f32/f16/bf16
// values to f32 lanes, tail masks and flush-to-zero. Each function carries its own target
// attribute, so including this header does not require compiling the file for AVX-512.
// GCC 12's AVX-512 headers start intrinsics from _mm512_undefined_*() values, which -Wall
// reports as uninitialized (GCC PR 105593, fixed in 13).
#pragma once
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>

#include "nibble/dtype.h"

#define NIBBLE_AVX512_COMMON __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace nibble::cpu::avx512 {

// The first min(left, 16) lanes.
NIBBLE_AVX512_COMMON inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

// Elements i .. i + 15 of p (f32, f16, or bf16 for any other dtype) widened to f32 exactly.
NIBBLE_AVX512_COMMON inline __m512 load16(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32:
      return _mm512_loadu_ps(static_cast<const float*>(p) + i);
    case DType::F16:
      return _mm512_cvtph_ps(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
    default:  // BF16
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i))),
          16));
  }
}

// The same for the lanes of mk only (the others read as zero, their memory untouched).
NIBBLE_AVX512_COMMON inline __m512 load16(const void* p, DType dt, int64_t i, __mmask16 mk) {
  switch (dt) {
    case DType::F32:
      return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(p) + i);
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(p) + i));
    default:  // BF16
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(p) + i)), 16));
  }
}

// v with subnormal lanes replaced by zeros of the same sign (quant::ftz on each lane; the GPU's
// .ftz), NaN kept.
NIBBLE_AVX512_COMMON inline __m512 ftz16(__m512 v) {
  const __mmask16 sub = _mm512_fpclass_ps_mask(v, 0x20);  // denormal class
  return _mm512_castsi512_ps(_mm512_mask_and_epi32(_mm512_castps_si512(v), sub, _mm512_castps_si512(v),
                                                   _mm512_set1_epi32(int(0x80000000u))));
}

}  // namespace nibble::cpu::avx512
