// Helpers shared by the forward and training kernels of the CUDA backend: the scope that makes a
// Launch's device current for one entry point, the grid of a grid-stride elementwise loop, and
// block-wide sums and maxima (blockDim.x a multiple of 32, at most 1024).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "backends/cuda/check.h"
#include "backends/cuda/launch_util.cuh"

namespace nibble::cuda {

class DeviceScope {  // makes l.device current for one entry point
 public:
  explicit DeviceScope(int dev) {
    NIBBLE_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != dev)
      NIBBLE_CUDA_CHECK(cudaSetDevice(dev));
    else
      prev_ = -1;
  }
  ~DeviceScope() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = -1;
};

// Blocks of a grid-stride loop over n elements (at most 65535: the loop covers the rest).
inline unsigned grid_for(int64_t n, int threads = 256) {
  return unsigned(std::min<int64_t>(std::max<int64_t>(ceil_div(n, threads), 1), 65535));
}

namespace dev {

// Sum over the block; every thread gets it. red: 32 floats of shared memory.
__device__ inline float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int w = threadIdx.x / 32, nw = blockDim.x / 32;
  __syncthreads();  // red may still be read by a previous call
  if ((threadIdx.x & 31) == 0) red[w] = v;
  __syncthreads();
  float t = 0.0f;
  for (int i = 0; i < nw; ++i) t += red[i];
  return t;
}
__device__ inline float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int w = threadIdx.x / 32, nw = blockDim.x / 32;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[w] = v;
  __syncthreads();
  float t = -FLT_MAX;
  for (int i = 0; i < nw; ++i) t = fmaxf(t, red[i]);
  return t;
}

}  // namespace dev
}  // namespace nibble::cuda
