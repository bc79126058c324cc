// Backward of rms_norm and layer_norm (train_cuda.h): one block per row, the row's sums as block
// reductions (f32; the host reference sums in double, so results agree to f32 rounding of the
// sums), the weight gradients atomically added across rows when asked for.
#include <cuda_runtime.h>

#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/quant_device.cuh"
#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {
namespace {

constexpr int kRowThreads = 256;

// xhat = x * inv; dxhat = dy * (offset + w); dx = inv * (dxhat - xhat * mean(dxhat * xhat)).
template <class W>
__global__ void rms_norm_bwd_kernel(const float* __restrict__ x, int64_t C, const void* __restrict__ w,
                                    float eps, float offset, const float* __restrict__ dy,
                                    float* __restrict__ dx, float* dw) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * C;
  const float* gr = dy + blockIdx.x * C;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  const float inv = rsqrtf(dev::block_sum(ss, red) / float(C) + eps);
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float xh = xr[c] * inv;
    dot += gr[c] * (offset + dev::load1<W>(w, c)) * xh;
    if (dw) atomicAdd(dw + c, gr[c] * xh);
  }
  const float m = dev::block_sum(dot, red) / float(C);
  float* o = dx + blockIdx.x * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    o[c] = inv * (gr[c] * (offset + dev::load1<W>(w, c)) - xr[c] * inv * m);
}

// xhat = (x - mean) rstd; dxhat = dy w; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
template <class W>
__global__ void layer_norm_bwd_kernel(const float* __restrict__ x, int64_t C, const void* __restrict__ w,
                                      float eps, const float* __restrict__ dy, float* __restrict__ dx,
                                      float* dw, float* db) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * C;
  const float* gr = dy + blockIdx.x * C;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
  const float mean = dev::block_sum(s, red) / float(C);
  float v = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += (xr[c] - mean) * (xr[c] - mean);
  const float rstd = rsqrtf(dev::block_sum(v, red) / float(C) + eps);
  float s1 = 0.0f, s2 = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float xh = (xr[c] - mean) * rstd, g = gr[c] * dev::load1<W>(w, c);
    s1 += g;
    s2 += g * xh;
    if (dw) atomicAdd(dw + c, gr[c] * xh);
    if (db) atomicAdd(db + c, gr[c]);
  }
  s1 = dev::block_sum(s1, red) / float(C);
  s2 = dev::block_sum(s2, red) / float(C);
  float* o = dx + blockIdx.x * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float xh = (xr[c] - mean) * rstd;
    o[c] = rstd * (gr[c] * dev::load1<W>(w, c) - s1 - xh * s2);
  }
}

}  // namespace

void rms_norm_backward(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt,
                       float eps, float offset, const float* dy, float* dx, float* dw) {
  if (M == 0 || C == 0) return;
  DeviceScope ds(l.device);
  with_float_dtype("cuda::rms_norm_backward", wdt, [&](auto W) {
    cuda::launch(rms_norm_bwd_kernel<decltype(W)>, dim3(unsigned(M)), dim3(kRowThreads), 0,
                 as_stream(l.stream), x, C, w, eps, offset, dy, dx, dw);
  });
}

void layer_norm_backward(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt,
                         float eps, const float* dy, float* dx, float* dw, float* db) {
  if (M == 0 || C == 0) return;
  DeviceScope ds(l.device);
  with_float_dtype("cuda::layer_norm_backward", wdt, [&](auto W) {
    cuda::launch(layer_norm_bwd_kernel<decltype(W)>, dim3(unsigned(M)), dim3(kRowThreads), 0,
                 as_stream(l.stream), x, C, w, eps, dy, dx, dw, db);
  });
}

}  // namespace nibble::cuda
