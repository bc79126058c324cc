// Forward-pass ops on host tensors (the CUDA versions come later behind the same calls).
// Activations are f32 [rows, features], row-major and contiguous; weights stay in their
// stored form (f32/f16/bf16, packed 4-bit, or int8) and are converted on the fly inside
// the kernels — never a full dequantized copy. Each op checks shapes/dtypes (ShapeError
// naming the op) and dispatches once on (device, dtype). Accumulation is in f32.
#pragma once

#include <cstdint>
#include <optional>

#include "nibble/quant.h"
#include "nibble/tensor.h"

namespace nibble::ops {

// y[M, N] = x[M, K] · W[N, K]^T (+ bias[N]). W is f32, f16 or bf16; bias f32/f16/bf16 or
// undefined. With round_to (F16/BF16) the inputs x are rounded to that dtype first and
// the output is rounded to it after the bias add (the arithmetic of a torch matmul in that
// dtype: exact products, f32 accumulation); F32 means no rounding. The bias is rounded to
// round_to as well (torch holds it in that dtype). x may have any leading dims: [..., K].
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, DType round_to = DType::F32);

// The same with a bitsandbytes 4-bit weight [N, K] (state.shape == {N, K}): the weight is
// dequantized row block by row block to compute_dtype exactly as bitsandbytes would
// (dequantize_4bit to compute_dtype), then multiplied as linear() with round_to=compute_dtype.
Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& bias,
                   DType compute_dtype);
// The same with the f32 absmax given (dequantize_absmax(state), [n_blocks]) so a caller can
// compute it once per weight instead of once per call when the state is double-quantized.
Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& absmax_f32,
                   const Tensor& bias, DType compute_dtype);

// LLM.int8 (bitsandbytes MatMul8bitLt, inference): x is rounded to f16; rows quantized with
// int8_vectorwise_quant(x, threshold); out = (CA · CB^T) * SCA ⊗ SCB / (127*127) in f32 then
// f16, plus bias (f16); columns of x holding any |x| >= threshold (threshold > 0) are zeroed in
// CA and contributed as x[:, cols] · (CB[:, cols] * SCB / 127)^T in f16. Output f32 [M, N].
// act_dtype is the model's activation dtype (bitsandbytes' A.dtype; F16 above): the bias is
// cast to it first (Linear8bitLt does; only an f16 bias is fused into the f16 dequantization,
// any other is added to the f16 result), the f16 result is cast to it, and the outlier product
// is computed in it (x rounded to it, f32 sums).
Tensor linear_int8(const Tensor& x, const Tensor& cb, const Tensor& scb, const Tensor& bias, float threshold,
                   DType act_dtype = DType::F16);

// Row-wise norms over the last dimension of x [M, C] (f32); weight/bias [C] any float dtype.
// rms_norm: x * rsqrt(mean(x^2) + eps) * (w, or (1 + w) when add_unit_offset, as Gemma).
Tensor rms_norm(const Tensor& x, const Tensor& w, float eps, bool add_unit_offset = false);
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);

enum class Activation { SiLU, GeluErf, GeluTanh, ReLU };
void activate_(Tensor& x, Activation a);  // in place
// out = act(gate) * up, elementwise ([M, F] each).
Tensor gated_activation(const Tensor& gate, const Tensor& up, Activation a);

// Rotary embedding in place on x [T, H, D] (f32) for the first rot_dim dims of each head,
// "rotate_half" layout (HF Llama/NeoX): pairs (i, i + rot_dim/2). cos/sin: [T, rot_dim/2].
void apply_rope_(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t rot_dim);

struct AttentionOptions {
  float scale = 1.0f;                      // multiplies q·k
  int64_t q_offset = 0;                    // position of q row 0 among the keys (KV cache)
  std::optional<int64_t> sliding_window;   // key j visible to query i iff i - j < window
  std::optional<float> softcap;            // logits = softcap * tanh(logits / softcap)
  const float* alibi_slopes = nullptr;     // [Hq]: adds slope * (j) (Bloom), or nullptr
};
// Causal attention. q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv] (f32; Hq a multiple of Hkv),
// query i sits at position q_offset + i and sees keys j <= q_offset + i. Out [T, Hq, Dv].
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts);

// log(sum(exp(row))) of one logits row, in double with the max subtracted first — the
// normalizer behind perplexity, KL and log-probabilities (host data, no dispatch).
double log_sum_exp(const float* row, int64_t n);

}  // namespace nibble::ops
