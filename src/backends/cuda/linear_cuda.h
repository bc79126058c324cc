// CUDA backend of the linear ops, declared without CUDA headers. Same semantics as the CPU
// backend (backends/cpu/linear_cpu.h; definitions in ops/nn_ops.h): activations f32
// [M, K] row-major, weights in their stored form, f32 accumulation, results f32 [M, N]
// rounded to round_to / compute_dtype exactly where the CPU path rounds. Only the summation
// order may differ. All pointers are device pointers on l.device; see launch.h.
#pragma once

#include <cstdint>

#include "backends/cuda/launch.h"
#include "nibble/dtype.h"

namespace nibble::cuda {

// out[M, N] = round(round(x) · W^T + round(bias)), W [N, K] f32/f16/bf16, bias [N] or nullptr.
// Tensor cores (cuBLASLt) for 16-bit W; M <= 16 a GEMV/skinny kernel.
size_t linear_workspace_bytes(int64_t M, int64_t K, int64_t N, DType wdt, DType round_to);
void linear(const Launch& l, const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
            const void* bias, DType bias_dt, DType round_to, float* out);

// A bitsandbytes 4-bit weight as stored: packed codes [N*K/2] (first value in the high nibble),
// and its absmax either plain (absmax f32 [n_blocks]) or nested (double quant:
// absmax[b] = code2[absmax_q[b]] * absmax2[b / nested_blocksize] + offset, in f32, exactly
// as the scalar reference's dequantize_absmax). quant_map: the 16 f32 code values.
// A bias's dtype as the kernels take it: 0 f32 (or no bias), 1 f16, 2 bf16; other dtypes are
// an UnsupportedError naming op.
int bias_dtype_code(const char* op, const void* bias, DType dt);

struct Quant4Weight {
  const uint8_t* packed = nullptr;
  int64_t blocksize = 64;
  DType quant_type = DType::NF4;  // NF4 or FP4
  const float* absmax = nullptr;  // plain absmax, or nullptr when nested
  const uint8_t* absmax_q = nullptr;
  const float* absmax2 = nullptr;
  const float* code2 = nullptr;  // [256]
  float offset = 0.0f;
  int64_t nested_blocksize = 256;
  const float* quant_map = nullptr;  // [16] device
};

// out[M, N] = round(round(x) · dequant(W)^T + round(bias)) with dequant(W) exactly
// dequantize_4bit(W) to compute_dtype, round() rounding to compute_dtype — except M <= 16 with
// a 16-bit compute dtype and blocksize >= 64, where the absmax scales each block's sum of
// round(code value) · round(x) (gemv_lut.h: one weight rounding apart).
// M <= 16: fused dequantize + GEMV/skinny GEMM reading the packed bytes and the (nested)
// absmax directly. Larger M: tensor-core GEMM over weight tiles dequantized on the fly (or a
// one-layer compute-dtype scratch in the workspace + cuBLASLt).
size_t linear_4bit_workspace_bytes(int64_t M, int64_t K, int64_t N, DType compute_dtype);
void linear_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
                 const void* bias, DType bias_dt, DType compute_dtype, float* out);

// LLM.int8 as the CPU backend's linear_int8 (bitsandbytes MatMul8bitLt inference): cb [N, K]
// int8, scb [N] f32, outlier columns (any |x| >= threshold over all M rows; none when
// threshold == 0) computed in act_dtype.
size_t linear_int8_workspace_bytes(int64_t M, int64_t K, int64_t N);
void linear_int8(const Launch& l, const float* x, int64_t M, int64_t K, const int8_t* cb, const float* scb,
                 int64_t N, const void* bias, DType bias_dt, float threshold, DType act_dtype, float* out);

}  // namespace nibble::cuda
