// The activations as the forward kernels compute them (nn_rows.cu's activate and gated
// kernels, and the gated epilogue of the decode GEMV): f32 math as the CPU backend. act_grad is
// their derivative as the training backward's host reference (ops/train_ops.cpp) computes it.
#pragma once

#include <cuda_runtime.h>

#include "backends/cuda/nn_cuda.h"

namespace nibble::cuda::dev {

__device__ __forceinline__ float act_f(float x, Act a) {
  switch (a) {
    case Act::SiLU:
      return x / (1.0f + expf(-x));
    case Act::GeluErf:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case Act::GeluTanh:
      return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    default:
      return x > 0.0f ? x : 0.0f;
  }
}

__device__ __forceinline__ float act_grad(float x, Act a) {
  switch (a) {
    case Act::SiLU: {
      const float s = 1.0f / (1.0f + expf(-x));
      return s * (1.0f + x * (1.0f - s));
    }
    case Act::GeluErf:
      return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
    case Act::GeluTanh: {
      const float k = 0.79788456080286536f, t = tanhf(k * (x + 0.044715f * x * x * x));
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
    }
    default:
      return x > 0.0f ? 1.0f : 0.0f;
  }
}

}  // namespace nibble::cuda::dev
