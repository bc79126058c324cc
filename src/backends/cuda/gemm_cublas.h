// Prefill-shaped linear (M > 16 rows of x) through cuBLAS: the weight dequantized (4-bit) or
// taken as stored (16-bit, f32) into a compute-dtype scratch in the caller's workspace, x rounded
// to the compute dtype beside it, one cublasGemmEx with f32 accumulation and an f32 result, then
// an epilogue adding the rounded bias and rounding the result. Internal to the CUDA backend.
//
// Why a one-layer scratch + cuBLAS rather than a fused dequantizing GEMM: the dequantized copy of
// the largest Llama-2-7B projection is 90 MB (bf16), written and read once per call (~45 us at
// 4 TB/s) against ~0.3 ms of matrix work at M = 512, and cuBLAS' Hopper kernels run the matrix
// work near the chip's rate; the numerics are the CPU backend's exactly (the dequantized weight
// and x rounded to the compute dtype, products exact in f32, f32 sums).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "backends/cuda/gemv_lut.h"
#include "backends/cuda/launch.h"
#include "nibble/dtype.h"

namespace nibble::cuda {

struct Quant4Weight;

// Workspace the GEMM path needs for this shape (0 when it would not be taken).
size_t gemm_4bit_workspace_bytes(int64_t M, int64_t K, int64_t N, DType compute_dtype);
size_t gemm_fp_workspace_bytes(int64_t M, int64_t K, int64_t N, DType wdt, DType round_to);

// True when taken (the output is being computed on l.stream); false when the shape or dtypes
// are not covered, and the caller uses its own kernel.
bool gemm_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
               const void* bias, int bias_code, DType compute_dtype, float* out);
// Several weights of one K on the same x (q, k, v): x rounded once, then one weight at a time
// through the W scratch (workspace: gemm_4bit_workspace_bytes for the largest N). Each output
// is what gemm_4bit gives it.
bool gemm_4bit_group(const Launch& l, const float* x, int64_t M, int64_t K, std::span<const Gemv4Target> ts,
                     DType compute_dtype);
// out [M, N] = act(gate's output) * up's output, each output as gemm_4bit gives it and the
// product as gated_activation forms it: x rounded once, both GEMMs write their f32 sums to
// gate.out and up.out (scratch here), and one pass applies both epilogues and the activation.
bool gemm_4bit_gated(const Launch& l, const float* x, int64_t M, int64_t K, const Gemv4Target& gate,
                     const Gemv4Target& up, Act act, DType compute_dtype, float* out);
// Whether dequant4_range / dequant4_cols take this weight: a blocksize that is a power of two >=
// 32, packed 16-byte aligned (their own shape and output conditions aside).
bool dequant4_takes(const Quant4Weight& w);
// Elements [e0, e0 + n) of a 4-bit weight (row-major, flattened) dequantized to ct as gemm_4bit's
// scratch holds them (dequantize_4bit's values), written from out; false (nothing enqueued) unless
// e0 and n are multiples of 8, the blocksize a power of two >= 32, and packed and out 16-byte aligned.
bool dequant4_range(const Launch& l, const Quant4Weight& w, DType ct, int64_t e0, int64_t n, void* out);
// Columns [k0, k0 + kt) of every row of a 4-bit weight [N, K] as a row-major [N, kt] tile, the
// same values; false (nothing enqueued) unless K, k0 and kt are multiples of 8, the blocksize a
// power of two >= 32, and packed and out 16-byte aligned.
bool dequant4_cols(const Launch& l, const Quant4Weight& w, DType ct, int64_t N, int64_t K, int64_t k0,
                   int64_t kt, void* out);
bool gemm_fp(const Launch& l, const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
             const void* bias, int bias_code, DType round_to, float* out);

}  // namespace nibble::cuda
