// Backward ops for training (f32, row-major). Each is the exact derivative of the forward op
// nibble runs, checked in tests/unit/test_train_ops.cpp against a double reference and finite
// differences. Two forms, as the forward ops (nn_ops.h): the host-pointer functions below are the
// scalar reference and the CPU backend; the `op(ctx, tensors...)` forms at the end check shapes
// (ShapeError naming the op and tensor) and dispatch once on the context's device
// (ops/dispatch.h): the CPU branch calls the host function, the CUDA branch the kernels of
// backends/cuda/train_cuda.h.
#pragma once

#include <cstdint>

#include "core/exec_context.h"
#include "nibble/tensor.h"
#include "ops/nn_ops.h"

namespace nibble::ops {

// transformers' causal-LM loss fused with the frozen lm_head: logits[t] = softcap(h[t] · W^T)
// (softcap <= 0: none), target of position t is labels[t + 1] (the shift), -100 ignored, mean
// over the non-ignored targets. The vocabulary is walked in chunks of `chunk` columns twice
// (logsumexp, then softmax - onehot), so no [T, V] buffer exists. h [T, H], W [V, H],
// labels [T]; dh [T, H] is overwritten with d(loss)/dh (no dW: the head is frozen). Returns the
// loss (NaN when every target is ignored, as torch's mean over zero elements).
double causal_lm_loss_backward(const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                               const int64_t* labels, float softcap, int64_t chunk, float* dh);

// The unshifted core of the above for a batch of stacked sequences: targets[t] is the target of
// row t (-100: none; the caller shifted within each sequence), the gradient of
// sum(nll) * grad_scale goes to dh (overwritten; null: loss only; grad_scale = 1 / the number of targets of
// the whole optimizer step, transformers' num_items_in_batch). Returns the summed NLL (double) and the number
// of targets through n_targets. Rows run in parallel. round_g (bf16/f16): the softmax gradient
// rounded to it before dh = G W (a 16-bit head under autocast; the caller rounds h and W).
double cross_entropy_head_backward(const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                                   const int64_t* targets, float softcap, int64_t chunk, float grad_scale,
                                   float* dh, int64_t* n_targets, DType round_g = DType::F32);

// y = x / rms(x) * (offset + w), rms = sqrt(mean(x^2) + eps) (offset 1: Gemma's unit offset).
// dx [rows, n] overwritten; dw [n] accumulated.
void rms_norm_backward(const float* x, const float* w, int64_t rows, int64_t n, float eps, float offset,
                       const float* dy, float* dx, float* dw);

// d/dx of silu(x), gelu (erf), gelu (tanh approximation), relu: dx = dy * f'(x).
enum class Act { Silu, GeluErf, GeluTanh, Relu };
void act_backward(Act a, const float* x, const float* dy, int64_t n, float* dx);
// y = act(gate) * up: dgate, dup overwritten (each may be gate's, up's or dy's storage).
void gated_act_backward(Act a, const float* gate, const float* up, const float* dy, int64_t n, float* dgate,
                        float* dup);

// Forward values of the activations above (what the MLP backward recomputes from gate).
float act_value(Act a, float x);

// y = (x - mean) / sqrt(var + eps) * w + b over rows of n: dx [rows, n] overwritten; dw, db [n]
// accumulated (either may be null: frozen).
void layer_norm_backward(const float* x, const float* w, int64_t rows, int64_t n, float eps, const float* dy,
                         float* dx, float* dw, float* db);

// y = cap * tanh(x / cap) given the output y: dx = dy * (1 - (y / cap)^2), in place on dy.
void softcap_backward_(const float* y, float cap, int64_t n, float* dy);

// The inverse rotation of apply_rope_ (HF rotate_half on the first rot_dim dims of each head):
// dx [T, H, D] in place, cos/sin [T, rot_dim / 2] as the forward used them.
void rope_backward_(float* dx, int64_t T, int64_t H, int64_t D, const float* cos, const float* sin,
                    int64_t rot_dim);

// Causal self-attention of one sequence (queries and keys at positions 0..T-1), as
// ops::attention computes it: s = scale * q.k, softcap, + alibi slope * j, sliding window,
// softmax, P.V; GQA (Hq a multiple of Hkv). The probabilities are recomputed from q and k
// (no [H, T, T] buffer is kept). q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], dout [T, Hq, Dv];
// dq, dk, dv overwritten. alibi_slopes: [Hq] or null.
struct AttnBwdOptions {
  float scale = 1.0f;
  int64_t sliding_window = 0;  // 0: none
  float softcap = 0.0f;        // 0: none
  const float* alibi_slopes = nullptr;
};
void attention_backward(const float* q, const float* k, const float* v, int64_t T, int64_t Hq, int64_t Hkv,
                        int64_t D, int64_t Dv, const AttnBwdOptions& o, const float* dout, float* dq,
                        float* dk, float* dv);

// Embedding: dW[ids[t]] += dy[t] (scatter-add); ids out of range -> ShapeError.
void embedding_backward(const int64_t* ids, int64_t T, const float* dy, int64_t H, int64_t V, float* dW);

// ---- optimizer pieces (torch.optim.AdamW's _single_tensor_adamw, clip_grad_norm_) -------------------
// The f32 scalars of one AdamW step at step count t (train::AdamW computes them in double as torch
// does): step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t), decay = 1 - lr * weight_decay.
struct AdamWStep {
  float step_size = 0, bc2_sqrt = 1, decay = 1, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
};
// x *= decay; m += (g - m) (1 - b1); v = v b2 + (1 - b2) g g; x -= step_size m / (sqrt(v) / bc2_sqrt + eps).
void adamw_update(float* x, const float* g, float* m, float* v, int64_t n, const AdamWStep& s);
// sum of double(x[i])^2 in order.
double sum_squares(const float* x, int64_t n);
// x[i] = float(double(x[i]) * coef) (clip_grad_norm_'s scaling as the host does it).
void scale_by(float* x, int64_t n, double coef);

// ---- forms with an execution context ------------------------------------------------------------
// Every tensor on ctx's device; activations and gradients contiguous f32; outputs caller-provided
// (overwritten unless "accumulated" is said). Norm weights may be f32/f16/bf16.

// dx [M, C] of rms_norm(x [M, C], w [C]); dw [C] accumulated, or undefined (frozen).
void rms_norm_backward(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, bool add_unit_offset,
                       const Tensor& dy, const Tensor& dx, const Tensor& dw);
// dx [M, C] of layer_norm(x, w, b); dw, db [C] accumulated, or undefined (frozen).
void layer_norm_backward(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, const Tensor& dy,
                         const Tensor& dx, const Tensor& dw, const Tensor& db);
// t = 0 (any contiguous tensor; on CUDA an asynchronous memset on the context's stream, where
// Tensor::zeros would fill a host buffer and copy it).
void zero_(ExecContext& ctx, const Tensor& t);
// dx = dy * act'(x) (all one shape).
void act_backward(ExecContext& ctx, Activation a, const Tensor& x, const Tensor& dy, const Tensor& dx);
// y = act(gate) * up: dgate, dup (all one shape; each may be the tensor gate, up or dy itself,
// element for element: dgate = gate, dup = up computes in place).
void gated_act_backward(ExecContext& ctx, Activation a, const Tensor& gate, const Tensor& up,
                        const Tensor& dy, const Tensor& dgate, const Tensor& dup);
// dy *= 1 - (y / cap)^2 in place (y, dy one shape; y the capped output).
void softcap_backward_(ExecContext& ctx, const Tensor& y, float cap, const Tensor& dy);
// dx [T, H, D] in place: the inverse rotation of apply_rope_ (cos/sin [T, rot_dim / 2] f32).
void rope_backward_(ExecContext& ctx, const Tensor& dx, const Tensor& cos, const Tensor& sin,
                    int64_t rot_dim);
// One sequence's causal self-attention from position 0 (opts.q_offset must be 0, no q_pos):
// q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], dout [T, Hq, Dv]; dq, dk, dv (f32) of their shapes.
// k and v may be f16/bf16 (as the forward's KV cache on CUDA): the CPU computes on their exact
// values in f32; CUDA takes the tensor cores (cuda::attention_backward_tc_fits), rounding q, dout,
// the probabilities and dS to that dtype as flash attention's backward does, or else the f32
// kernels on their values. `out`, when given, is the forward's output (f32 [T, Hq, Dv]): the
// tensor cores then take each row's Dsum = sum_j p_j dp_j as dO . O (flash attention's way)
// instead of a second product with V; the other paths check its shape and compute without it.
// `lse` (with `out`), when given, is each row's log-sum-exp as ops::attention wrote it (f32
// [T, Hq]): the tensor cores take the softmax statistics from it instead of a first pass over the
// keys; the other paths check its shape and compute without it.
void attention_backward(ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const AttentionOptions& opts, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                        const Tensor& dv, const Tensor& out = Tensor(), const Tensor& lse = Tensor());
// dW [V, H] += scatter of dy [T, H] at ids (i64 [T]). Out-of-range ids: ShapeError on the CPU;
// the CUDA kernel skips them (the caller checks ids on the host, where they come from).
void embedding_backward(ExecContext& ctx, const Tensor& ids, const Tensor& dy, const Tensor& dW);

// AdamW on one contiguous f32 tensor x with its gradient g and moments m, v (one shape, one
// device): the same f32 arithmetic on both devices (CUDA built without fused multiply-adds: the
// same bits).
void adamw_(ExecContext& ctx, const Tensor& x, const Tensor& g, const Tensor& m, const Tensor& v,
            const AdamWStep& s);
// out[k] = sum of double(x[e])^2 over segment k of contiguous f32 x, e in [ends[k-1], ends[k])
// (ends[-1] = 0; ends i64 [n] on x's device, non-decreasing, ends[n-1] <= numel), out f64 [n] on
// ctx's device: one launch for every segment (the tensors of an optimizer's flat gradient). CUDA:
// a block a segment, a fixed-order tree (the same value every run, not the host's order).
void sum_squares(ExecContext& ctx, const Tensor& x, const Tensor& ends, const Tensor& out);
// x = float(double(x) * coef) over contiguous f32 x.
void scale_(ExecContext& ctx, const Tensor& x, double coef);

// cross_entropy_head_backward above: h [T, H], W [V, H] f32, bf16 or f16, targets i64 [T] (-100:
// none), dh [T, H] overwritten (undefined: loss only). The loss and the target count come back to
// the host (on CUDA: one copy of T per-row losses, summed in double there). A 16-bit W is the
// head under bitsandbytes' autocast: h rounded to W's dtype, f32 logits, the softmax gradient
// rounded to W's dtype before dh = G W (CUDA: cuda::cross_entropy_head16, whole rows at a time;
// chunk applies to the host). tf32 (an f32 W holding a 16-bit head's values): on CUDA the head's
// GEMMs run on TF32 tensor cores (cuda::cross_entropy_head); the CPU ignores it.
struct HeadLoss {
  double loss_sum = 0;
  int64_t n_targets = 0;
};
HeadLoss cross_entropy_head_backward(ExecContext& ctx, const Tensor& h, const Tensor& W,
                                     const Tensor& targets, float softcap, int64_t chunk, float grad_scale,
                                     const Tensor& dh, bool tf32 = false);

}  // namespace nibble::ops
