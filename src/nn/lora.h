// The LoRA term beside a frozen Linear, with its backward:
//   y = W x + b + s · B (A · dropout(x)),  s = alpha / r (or alpha / sqrt(r) with rslora),
// and dX through the frozen base weight (fp, NF4/FP4 or int8), dequantized a tile of output
// rows at a time into a small f32 buffer (never a whole dequantized copy).
#pragma once

#include <cstdint>
#include <vector>

#include "nn/linear.h"

namespace nibble::nn {

// An adapter attached to one Linear: A f32 [r, in], B f32 [out, r] on the model's device (on the
// CPU shared storage with the adapter that owns them, so an optimizer step is seen by the next
// forward; on CUDA a copy that PeftModel::copy_adapter_to_device refreshes), the scaling s and
// the dropout p used when training.
struct LoraWeights {
  Tensor A, B;
  float scale = 0.0f;
  float dropout = 0.0f;
  // Training on CUDA: lora_forward / lora_backward's GEMMs on TF32 tensor cores (set for a model
  // with a 16-bit compute dtype, whose adapter GEMMs autocast runs in bf16; TF32 keeps 3 more bits).
  bool tf32 = false;
  bool defined() const { return A.defined(); }
  int64_t r() const { return A.size(0); }
};

// out [M, out] += s · B (A x) for x [M, in] (rows may be strided), no dropout (inference), on
// ctx's device (lora_forward below).
void lora_add(ExecContext& ctx, const LoraWeights& w, const Tensor& x, const Tensor& out);

// What the backward needs from one forward call.
struct LoraSaved {
  std::vector<float> xd;      // [M, in] dropout(x) (mask / (1 - p) applied); empty when p == 0
  std::vector<uint8_t> mask;  // [M, in] dropout keep mask; empty when p == 0
  float keep_scale = 1.0f;    // 1 / (1 - p)
  std::vector<float> h;       // [M, r]  A · dropout(x)
};

// A f32 [r, in], B f32 [out, r]; x [M, in]; y [M, out] gets the LoRA term added. dropout p in
// [0, 1): inverted dropout with a mask drawn from std::mt19937_64(seed) (not torch's RNG).
void lora_forward(const float* x, int64_t M, int64_t in, const float* A, const float* B, int64_t r,
                  int64_t out, float scale, float dropout, uint64_t seed, float* y, LoraSaved* saved);

// The same writing the saved state into caller-provided buffers: xd and mask [M, in] (used only
// when p > 0), h [M, r].
void lora_forward(const float* x, int64_t M, int64_t in, const float* A, const float* B, int64_t r,
                  int64_t out, float scale, float dropout, uint64_t seed, float* y, float* xd, uint8_t* mask,
                  float* h);

// Given dy [M, out]: dA [r, in] and dB [out, r] accumulate (+=); dx [M, in] (may be null)
// accumulates the LoRA path's part. x is the forward input (used when p == 0).
void lora_backward(const float* dy, const float* x, int64_t M, int64_t in, const float* A, const float* B,
                   int64_t r, int64_t out, float scale, const LoraSaved& saved, float* dA, float* dB,
                   float* dx);
// The same with the saved state given by pointers (xd and mask null when p == 0).
struct LoraSavedRef {
  const float* xd = nullptr;
  const uint8_t* mask = nullptr;
  float keep_scale = 1.0f;
  const float* h = nullptr;
};
void lora_backward(const float* dy, const float* x, int64_t M, int64_t in, const float* A, const float* B,
                   int64_t r, int64_t out, float scale, const LoraSavedRef& saved, float* dA, float* dB,
                   float* dx);

// dx [M, in] += dy [M, out] · W [out, in] for the frozen base of `base` (any format), W as the
// forward uses it (4-bit: bitsandbytes' dequantization; int8: CB * SCB / 127).
void linear_backward_dx(const Linear& base, const float* dy, int64_t M, float* dx);

// The inverted-dropout keep mask of n inputs (1: kept) drawn from std::mt19937_64(seed), as
// lora_forward draws it. Both devices use this host mask, so a CUDA pass drops what the CPU drops.
std::vector<uint8_t> dropout_mask(int64_t n, float p, uint64_t seed);
void dropout_mask(uint8_t* mask, int64_t n, float p, uint64_t seed);

// ---- forms with an execution context (nn/lora_ops.cpp) -------------------------------------------
// The functions above on tensors of ctx's device, dispatched through ops/dispatch.h (the CPU
// branch calls the host functions, so CPU results are theirs bit for bit). A and B of w, x, dy,
// out, dx and the gradients are contiguous f32 on ctx's device.

// What the backward needs from one forward call, on the forward's device.
struct LoraCache {
  Tensor xd;    // [M, in] dropout(x); undefined when p == 0
  Tensor mask;  // u8 [M, in] keep mask; undefined when p == 0
  float keep_scale = 1.0f;
  Tensor h;  // [M, r] A · dropout(x)
};
// out [M, out] += s · B (A · dropout(x)) for x [M, in]; dropout p (0: none) with dropout_mask(seed).
void lora_forward(ExecContext& ctx, const LoraWeights& w, const Tensor& x, float dropout, uint64_t seed,
                  const Tensor& out, LoraCache* saved);
// dA [r, in] and dB [out, r] accumulate; dx [M, in] (undefined: not needed) accumulates.
void lora_backward(ExecContext& ctx, const LoraWeights& w, const Tensor& x, const Tensor& dy,
                   const LoraCache& saved, const Tensor& dA, const Tensor& dB, const Tensor& dx);
// dx [M, in] += dy [M, out] · W of the frozen base (W a tile of rows at a time on either device).
void linear_backward_dx(ExecContext& ctx, const Linear& base, const Tensor& dy, const Tensor& dx);

}  // namespace nibble::nn
