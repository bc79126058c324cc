// The LoRA term beside a frozen Linear, with its backward:
//   y = W x + b + s · B (A · dropout(x)),  s = alpha / r (or alpha / sqrt(r) with rslora),
// and dX through the frozen base weight (fp, NF4/FP4 or int8), dequantized a tile of output
// rows at a time into a small f32 buffer (never a whole dequantized copy).
#pragma once

#include <cstdint>
#include <vector>

#include "nn/linear.h"

namespace nibble::nn {

// An adapter attached to one Linear: A f32 [r, in], B f32 [out, r] on the host (shared storage
// with the adapter that owns them, so an optimizer step is seen by the next forward), the
// scaling s and the dropout p used when training.
struct LoraWeights {
  Tensor A, B;
  float scale = 0.0f;
  float dropout = 0.0f;
  bool defined() const { return A.defined(); }
  int64_t r() const { return A.size(0); }
};

// out [M, out] += s · B (A x) for x [M, in] (rows may be strided), no dropout (inference).
// CPU only: UnsupportedError on another device.
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

// Given dy [M, out]: dA [r, in] and dB [out, r] accumulate (+=); dx [M, in] (may be null)
// accumulates the LoRA path's part. x is the forward input (used when p == 0).
void lora_backward(const float* dy, const float* x, int64_t M, int64_t in, const float* A, const float* B,
                   int64_t r, int64_t out, float scale, const LoraSaved& saved, float* dA, float* dB,
                   float* dx);

// dx [M, in] += dy [M, out] · W [out, in] for the frozen base of `base` (any format), W as the
// forward uses it (4-bit: bitsandbytes' dequantization; int8: CB * SCB / 127).
void linear_backward_dx(const Linear& base, const float* dy, int64_t M, float* dx);

}  // namespace nibble::nn
