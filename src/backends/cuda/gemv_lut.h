// Decode-shaped 4-bit linear (M <= 16 rows of x, bf16/f16 compute dtype) on the tensor cores,
// with the absmax applied per block after the products (gemv_lut.cu):
//
//   out[m, n] = round( sum_b absmax[n, b] * sum_{k in b} ct(code_value[w[n, k]]) * ct(x[m, k]) )
//
// ct() rounding to the compute dtype, products exact in f32, f32 sums. It is not the
// dequantize-then-matmul rounding of the CPU backend and gemv_mma.cu (ct(code_value * absmax)):
// one weight differs by at most one rounding of the compute dtype (2^-8 relative for bf16,
// 2^-11 for f16). bitsandbytes' own decode kernel (gemv_4bit) rounds more: the code value, the
// absmax, their product and each product with x, all to the compute dtype.
// A 16 x 256 pair table in shared memory turns each packed byte (two codes) into the mma's
// packed 16-bit pair with one byte permute and one conflict-free shared load.
//
// Weights in blocks of 64 with K % 256 == 0 (the bitsandbytes default on every decoder shape) take
// the pipelined kernel: weights and absmax stream into shared memory with cp.async, stages ahead
// and across row tiles; the rest (and NIBBLE_GEMV4=lut) the register-staged kernel. Same math.
// NIBBLE_GEMV4=mma in the environment sends these calls to gemv_mma.cu instead (benchmarks).
#pragma once

#include <cstdint>
#include <span>

#include "backends/cuda/launch.h"
#include "backends/cuda/nn_cuda.h"
#include "nibble/dtype.h"

namespace nibble::cuda {

struct Quant4Weight;

// True when this path takes the call: M in [1, 16], K % 64 == 0, blocksize >= 64, a 16-bit
// compute dtype, x 16-byte aligned, and NIBBLE_GEMV4 not "mma".
bool gemv_lut_4bit_ok(int64_t M, int64_t K, const Quant4Weight& w, DType compute_dtype, const float* x);
void gemv_lut_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
                   const void* bias, int bias_code, DType compute_dtype, float* out);

// One weight of a grouped launch: out [M, N] = x · W^T (+ bias).
struct Gemv4Target {
  const Quant4Weight* w;
  int64_t N;
  const void* bias;  // nullptr or [N] of bias_code's dtype
  int bias_code;
  float* out;
};
// The input computed inside the launch instead of read from x: x = rms_norm(h + r) (h, r
// [M, K] f32; weight w [K] of bias dtype code w_code, plus unit; rms_norm_kernel's f32 formula),
// staged in the compute dtype; the launch's first block also writes h + r into h_out (not h).
// Taken where gemv_lut_4bit_rms_ok(M, K): the staged x fits shared memory.
struct Gemv4Rms {
  const float* h;
  const float* r;
  const void* w;
  int w_code;
  float eps, unit;
  float* h_out;
};
bool gemv_lut_4bit_rms_ok(int64_t M, int64_t K);

// Up to three weights of one K read in one launch (q, k, v): each as gemv_lut_4bit would
// compute it. The group is taken when every weight is, with one blocksize, quant type and
// absmax kind.
bool gemv_lut_4bit_group_ok(int64_t M, int64_t K, std::span<const Gemv4Target> ts, DType compute_dtype,
                            const float* x);
void gemv_lut_4bit_group(const Launch& l, const float* x, int64_t M, int64_t K,
                         std::span<const Gemv4Target> ts, DType compute_dtype, const Gemv4Rms* rms = nullptr);
// out [M, F] = act(gate(x)) * up(x), gate and up each rounded as gemv_lut_4bit rounds them and
// the product in f32 as gated_activation computes it (gate.N == up.N == F; their out unused).
void gemv_lut_4bit_gated(const Launch& l, const float* x, int64_t M, int64_t K, const Gemv4Target& gate,
                         const Gemv4Target& up, Act act, DType compute_dtype, float* out,
                         const Gemv4Rms* rms = nullptr);

}  // namespace nibble::cuda
