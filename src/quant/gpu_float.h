// Float arithmetic as bitsandbytes' CUDA kernels perform it. bitsandbytes is built with
// nvcc --use_fast_math, so its kernels flush denormals to zero in every f32 operation (.ftz)
// and compute 1.0f / x with the approximate reciprocal (PTX rcp.approx.ftz.f32). To produce
// the same bytes on the CPU we reproduce both: ftz() by testing the exponent, and
// rcp_approx() from a table of where the hardware reciprocal differs from the correctly
// rounded one (measured on an H100; see dev/rcp_table/).
#pragma once

#include <cstdint>

#include "nibble/dtype.h"

namespace nibble::quant {

// Denormals become a zero of the same sign.
inline float ftz(float x) {
  uint32_t u = f32_bits(x);
  return (u & 0x7f800000u) == 0 ? bits_f32(u & 0x80000000u) : x;
}

// The GPU's approximate reciprocal with flush-to-zero, bit for bit (sm_90 MUFU.RCP).
float rcp_approx(float x);

// x * y as mul.ftz.f32.
inline float mul_ftz(float x, float y) { return ftz(ftz(x) * ftz(y)); }

}  // namespace nibble::quant
