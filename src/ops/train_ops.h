// Backward ops for training (f32 host buffers, row-major). Each is the exact derivative of the
// forward op nibble runs, checked in tests/unit/test_train_ops.cpp against a double reference and
// finite differences. (Scalar reference code; the CPU backend split comes with the decoder backward.)
#pragma once

#include <cstdint>

namespace nibble::ops {

// transformers' causal-LM loss fused with the frozen lm_head: logits[t] = softcap(h[t] · W^T)
// (softcap <= 0: none), target of position t is labels[t + 1] (the shift), -100 ignored, mean
// over the non-ignored targets. The vocabulary is walked in chunks of `chunk` columns twice
// (logsumexp, then softmax - onehot), so no [T, V] buffer exists. h [T, H], W [V, H],
// labels [T]; dh [T, H] is overwritten with d(loss)/dh (no dW: the head is frozen). Returns the
// loss (NaN when every target is ignored, as torch's mean over zero elements).
double causal_lm_loss_backward(const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                               const int64_t* labels, float softcap, int64_t chunk, float* dh);

// y = x / rms(x) * (offset + w), rms = sqrt(mean(x^2) + eps) (offset 1: Gemma's unit offset).
// dx [rows, n] overwritten; dw [n] accumulated.
void rms_norm_backward(const float* x, const float* w, int64_t rows, int64_t n, float eps, float offset,
                       const float* dy, float* dx, float* dw);

// d/dx of silu(x), gelu (erf), gelu (tanh approximation): dx = dy * f'(x).
enum class Act { Silu, GeluErf, GeluTanh };
void act_backward(Act a, const float* x, const float* dy, int64_t n, float* dx);
// y = act(gate) * up: dgate, dup overwritten.
void gated_act_backward(Act a, const float* gate, const float* up, const float* dy, int64_t n, float* dgate,
                        float* dup);

// Embedding: dW[ids[t]] += dy[t] (scatter-add); ids out of range -> ShapeError.
void embedding_backward(const int64_t* ids, int64_t T, const float* dy, int64_t H, int64_t V, float* dW);

}  // namespace nibble::ops
