// Elementwise and scatter kernels of the training backward (train_cuda.h): activation
// derivatives, softcap, the inverse rope rotation, the embedding scatter, and LoRA's dropout
// (mask drawn on the host). Grid-stride loops; f32 math as the host reference.
#include <cuda_runtime.h>

#include "backends/cuda/act.cuh"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {
namespace {

#define NIBBLE_GRID_STRIDE(i, n)                                            \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

__global__ void act_bwd_kernel(Act a, const float* x, const float* dy, int64_t n, float* dx) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_GRID_STRIDE(i, n) dx[i] = dy[i] * dev::act_grad(x[i], a);
}

__global__ void gated_act_bwd_kernel(Act a, const float* gate, const float* up, const float* dy, int64_t n,
                                     float* dgate, float* dup) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_GRID_STRIDE(i, n) {  // loads first: the outputs may be the inputs' storage
    const float g = gate[i], u = up[i], d = dy[i];
    dgate[i] = d * u * dev::act_grad(g, a);
    dup[i] = d * dev::act_f(g, a);
  }
}

__global__ void softcap_bwd_kernel(const float* y, float cap, int64_t n, float* dy) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_GRID_STRIDE(i, n) {
    const float t = y[i] / cap;
    dy[i] *= 1.0f - t * t;
  }
}

// Block per token, its threads over (head, pair): forward y1 = a c - b s, y2 = b c + a s, so
// da = g1 c + g2 s, db = g2 c - g1 s.
__global__ void rope_bwd_kernel(float* dx, int64_t H, int64_t D, const float* cos, const float* sin,
                                int64_t half) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t t = blockIdx.x;
  const float* c = cos + t * half;
  const float* s = sin + t * half;
  for (int64_t hd = threadIdx.x; hd < H * half; hd += blockDim.x) {
    const int64_t h = hd / half, d = hd % half;
    float* g = dx + (t * H + h) * D;
    const float g1 = g[d], g2 = g[d + half];
    g[d] = g1 * c[d] + g2 * s[d];
    g[d + half] = g2 * c[d] - g1 * s[d];
  }
}

// Block rows t: dW[ids[t], :] += dy[t, :] (two tokens may share a row, hence atomics).
__global__ void embedding_bwd_kernel(const int64_t* ids, int64_t T, const float* dy, int64_t H, int64_t V,
                                     float* dW) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    const int64_t id = ids[t];
    if (id < 0 || id >= V) continue;
    for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < H;
         k += int64_t(gridDim.x) * blockDim.x)
      atomicAdd(dW + id * H + k, dy[t * H + k]);
  }
}

__global__ void dropout_kernel(const float* x, const uint8_t* mask, float keep, int64_t n, float* xd) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_GRID_STRIDE(i, n) xd[i] = mask[i] ? x[i] * keep : 0.0f;
}

__global__ void masked_add_kernel(const float* t, const uint8_t* mask, float keep, int64_t n, float* dx) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_GRID_STRIDE(i, n) dx[i] += mask ? (mask[i] ? t[i] * keep : 0.0f) : t[i];
}

#undef NIBBLE_GRID_STRIDE

}  // namespace

void zero(const Launch& l, void* p, size_t bytes) {
  if (bytes == 0) return;
  DeviceScope ds(l.device);
  NIBBLE_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, as_stream(l.stream)));
}

void act_backward(const Launch& l, Act a, const float* x, const float* dy, int64_t n, float* dx) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(act_bwd_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), a, x, dy, n, dx);
}

void gated_act_backward(const Launch& l, Act a, const float* gate, const float* up, const float* dy,
                        int64_t n, float* dgate, float* dup) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(gated_act_bwd_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), a, gate, up, dy, n,
               dgate, dup);
}

void softcap_backward(const Launch& l, const float* y, float cap, int64_t n, float* dy) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(softcap_bwd_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), y, cap, n, dy);
}

void rope_backward(const Launch& l, float* dx, int64_t T, int64_t H, int64_t D, const float* cos,
                   const float* sin, int64_t rot_dim) {
  if (T == 0 || H == 0 || rot_dim < 2) return;
  DeviceScope ds(l.device);
  cuda::launch(rope_bwd_kernel, dim3(unsigned(T)), dim3(256), 0, as_stream(l.stream), dx, H, D, cos, sin,
               rot_dim / 2);
}

void embedding_backward(const Launch& l, const int64_t* ids, int64_t T, const float* dy, int64_t H, int64_t V,
                        float* dW) {
  if (T == 0 || H == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(embedding_bwd_kernel, dim3(grid_for(H), unsigned(std::min<int64_t>(T, 65535))), dim3(256), 0,
               as_stream(l.stream), ids, T, dy, H, V, dW);
}

void dropout_apply(const Launch& l, const float* x, const uint8_t* mask, float keep, int64_t n, float* xd) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(dropout_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), x, mask, keep, n, xd);
}

void masked_add(const Launch& l, const float* t, const uint8_t* mask, float keep, int64_t n, float* dx) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(masked_add_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), t, mask, keep, n, dx);
}

}  // namespace nibble::cuda
