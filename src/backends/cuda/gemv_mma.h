// Decode-shaped linear (M <= 16 rows of x) on the tensor cores, for 16-bit compute dtypes:
// the weight plays the mma's A operand (16 weight rows a tile), x its B operand (8 or 16 x
// rows), so W streams from memory once per call and each 16-byte load feeds 8 (4-bit) or 2
// (16-bit) mma k-steps. Internal to the CUDA backend (linear_kernels.cu decides when to use it).
//
// Numerics: exactly the CPU backend's (x and the dequantized weight rounded to the compute
// dtype, products exact in f32, f32 accumulation, bias rounded, added, result rounded); only
// the summation order differs.
#pragma once

#include <cstdint>

#include "backends/cuda/launch.h"
#include "nibble/dtype.h"

namespace nibble::cuda {

struct Quant4Weight;

// True when the mma path takes this call: M in [1, 16], K a multiple of 128 (4-bit) or 32
// (16-bit W), 16-byte aligned W and x, and a 16-bit compute dtype (for fp W: W's own dtype).
bool gemv_mma_4bit_ok(int64_t M, int64_t K, const Quant4Weight& w, DType compute_dtype, const float* x);
bool gemv_mma_fp_ok(int64_t M, int64_t K, const void* w, DType wdt, DType round_to, const float* x);

void gemv_mma_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
                   const void* bias, int bias_code, DType compute_dtype, float* out);
void gemv_mma_fp(const Launch& l, const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
                 const void* bias, int bias_code, float* out);

}  // namespace nibble::cuda
