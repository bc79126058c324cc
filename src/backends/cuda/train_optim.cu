// The optimizer step on the device (train_cuda.h): AdamW per element with ops::adamw_update's f32
// arithmetic (this build compiles without fused multiply-adds, and sqrt and division are IEEE, so
// the bits are the host's), the sums of squares behind clip_grad_norm_ in double (a block a tensor: each
// thread's strided sum, then a fixed tree, so a run repeats its value), and the clip's scaling.
#include <cuda_runtime.h>

#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {
namespace {

constexpr int kSumThreads = 512;

__global__ void adamw_kernel(float* x, const float* g, float* m, float* v, int64_t n, AdamWScalars s) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    float xk = x[k] * s.decay;
    const float gk = g[k];
    const float mk = m[k] + (gk - m[k]) * (1.0f - s.b1);
    const float vk = v[k] * s.b2 + (1.0f - s.b2) * gk * gk;
    const float denom = sqrtf(vk) / s.bc2_sqrt + s.eps;
    xk -= s.step_size * (mk / denom);
    x[k] = xk;
    m[k] = mk;
    v[k] = vk;
  }
}

__global__ void __launch_bounds__(kSumThreads)
    sum_squares_kernel(const float* x_all, const int64_t* ends, double* out_all) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ double part[kSumThreads];
  const int64_t b = blockIdx.x ? ends[blockIdx.x - 1] : 0, n = ends[blockIdx.x] - b;
  const float* x = x_all + b;
  double* out = out_all + blockIdx.x;
  double s = 0;
  for (int64_t k = threadIdx.x; k < n; k += kSumThreads) s += double(x[k]) * x[k];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kSumThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = part[0];
}

__global__ void scale_kernel(float* x, int64_t n, double coef) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x)
    x[k] = float(x[k] * coef);
}

}  // namespace

void adamw(const Launch& l, float* x, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(adamw_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), x, g, m, v, n, s);
}

void sum_squares(const Launch& l, const float* x, const int64_t* ends, int64_t n, double* out) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(sum_squares_kernel, dim3(unsigned(n)), dim3(kSumThreads), 0, as_stream(l.stream), x, ends, out);
}

void scale(const Launch& l, float* x, int64_t n, double coef) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(scale_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), x, n, coef);
}

}  // namespace nibble::cuda
