// Scalar references of the forward ops in nn_ops.h, for tests: one element at a time, sums
// in double, no threads, no SIMD — slow and obviously right. They return f64 tensors so a
// test can see how far the fast f32 op is from the exact value; where an op rounds its
// inputs (round_to, compute_dtype, LLM.int8's f16 cast) the reference rounds them the same
// way. Output rounding is left to the caller (see each function).
#pragma once

#include <cstdint>

#include "nibble/quant.h"
#include "nibble/tensor.h"
#include "ops/nn_ops.h"

namespace nibble::ops::ref {

// x [..., K] f32, w [N, K] f32/f16/bf16, bias [N] or undefined -> f64 [M, N]:
// sum_k round(x) * w + round(bias), exact in double, NOT rounded to round_to afterwards.
// mag (optional) receives f64 [M, N]: sum_k |round(x) * w| + |bias|, the scale of the
// rounding error a float accumulation may make.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, DType round_to, Tensor* mag = nullptr);

// dequantize (quant::ref, to compute_dtype) then linear() above; same return conventions.
Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& bias,
                   DType compute_dtype, Tensor* mag = nullptr);

// bitsandbytes MatMul8bitLt step by step (quant::ref::int8_vectorwise_quant, int64 products,
// the kdequant_mm_int32_fp16 arithmetic, the outlier addmm with a double sum rounded once to
// act_dtype). Returns f32 [M, N], the final values.
Tensor linear_int8(const Tensor& x, const Tensor& cb, const Tensor& scb, const Tensor& bias, float threshold,
                   DType act_dtype = DType::F16);

Tensor rms_norm(const Tensor& x, const Tensor& w, float eps, bool add_unit_offset = false);  // f64
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);             // f64
double activation(double x, Activation a);
// x [T, H, D] -> f64 [T, H, D].
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t rot_dim);
// -> f64 [T, Hq, Dv]; rows with no visible key are 0.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts);

}  // namespace nibble::ops::ref
