// Backward of causal self-attention (train_cuda.h), recomputing the probabilities as the host
// reference (ops/train_attention.cpp) does: one block per (query row i, query head h), the keys
// j of row i spread over the threads, three passes over them (the row max; the softmax sum and
// sum_j p_j dp_j; the gradients). dq of the row is summed in shared memory; dk and dv rows are
// shared by every query row and by the heads of a GQA group, so they take atomicAdd. Nothing of
// size [H, T, T] exists. Correctness first: a flash-style tiled kernel is the next step.
#include <cuda_runtime.h>

#include <cfloat>

#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {
namespace {

constexpr int kThreads = 128;

struct Score {
  float s;       // the logit after scale, softcap and ALiBi
  float dlogit;  // d(logit) / d(q.k)
};

__device__ __forceinline__ Score score(const AttentionBackward& a, const float* q_sh, const float* kj,
                                       int64_t h, int64_t j) {
  float acc = 0.0f;
  for (int64_t e = 0; e < a.D; ++e) acc += q_sh[e] * kj[e];
  Score r{acc * a.scale, a.scale};
  if (a.softcap > 0.0f) {
    const float t = tanhf(r.s / a.softcap);
    r.s = t * a.softcap;
    r.dlogit *= 1.0f - t * t;
  }
  if (a.alibi) r.s += a.alibi[h] * float(j);
  return r;
}

__device__ __forceinline__ float dot(const float* x, const float* y, int64_t n) {
  float acc = 0.0f;
  for (int64_t e = 0; e < n; ++e) acc += x[e] * y[e];
  return acc;
}

// Dynamic shared memory: q_i [D], dout_i [Dv], dq_i [D].
__global__ void attention_bwd_kernel(AttentionBackward a) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  extern __shared__ float sh[];
  __shared__ float red[32];
  const int64_t i = blockIdx.x, h = blockIdx.y, kvh = h / (a.Hq / a.Hkv);
  float* q_sh = sh;
  float* do_sh = sh + a.D;
  float* dq_sh = do_sh + a.Dv;
  for (int64_t e = threadIdx.x; e < a.D; e += blockDim.x) {
    q_sh[e] = a.q[(i * a.Hq + h) * a.D + e];
    dq_sh[e] = 0.0f;
  }
  for (int64_t e = threadIdx.x; e < a.Dv; e += blockDim.x) do_sh[e] = a.dout[(i * a.Hq + h) * a.Dv + e];
  __syncthreads();
  const int64_t lo = a.window > 0 ? max(int64_t(0), i - a.window + 1) : 0;
  const float* kh = a.k + kvh * a.D;  // key j at kh + j * Hkv * D
  const float* vh = a.v + kvh * a.Dv;
  const int64_t ks = a.Hkv * a.D, vs = a.Hkv * a.Dv;
  float mx = -FLT_MAX;
  for (int64_t j = lo + threadIdx.x; j <= i; j += blockDim.x)
    mx = fmaxf(mx, score(a, q_sh, kh + j * ks, h, j).s);
  mx = dev::block_max(mx, red);
  float sum = 0.0f, edp = 0.0f;
  for (int64_t j = lo + threadIdx.x; j <= i; j += blockDim.x) {
    const float e = expf(score(a, q_sh, kh + j * ks, h, j).s - mx);
    sum += e;
    edp += e * dot(do_sh, vh + j * vs, a.Dv);
  }
  sum = dev::block_sum(sum, red);
  const float pdp = dev::block_sum(edp, red) / sum;  // sum_l p_l dp_l
  const float inv = 1.0f / sum;
  for (int64_t j = lo + threadIdx.x; j <= i; j += blockDim.x) {
    const float* kj = kh + j * ks;
    const float* vj = vh + j * vs;
    const Score sc = score(a, q_sh, kj, h, j);
    const float p = expf(sc.s - mx) * inv;
    const float ds = p * (dot(do_sh, vj, a.Dv) - pdp) * sc.dlogit;
    float* dvj = a.dv + j * vs + kvh * a.Dv;
    for (int64_t e = 0; e < a.Dv; ++e) atomicAdd(dvj + e, p * do_sh[e]);
    if (ds == 0.0f) continue;
    float* dkj = a.dk + j * ks + kvh * a.D;
    for (int64_t e = 0; e < a.D; ++e) {
      atomicAdd(dkj + e, ds * q_sh[e]);
      atomicAdd(dq_sh + e, ds * kj[e]);
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < a.D; e += blockDim.x) a.dq[(i * a.Hq + h) * a.D + e] = dq_sh[e];
}

}  // namespace

void attention_backward(const Launch& l, const AttentionBackward& a) {
  if (a.T == 0 || a.Hq == 0) return;
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0 || a.Hq > 65535)
    throw ShapeError(
        detail::str("cuda::attention_backward: Hq ", a.Hq, " and Hkv ", a.Hkv, " not supported"));
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
  NIBBLE_CUDA_CHECK(cudaMemsetAsync(a.dk, 0, size_t(a.T * a.Hkv * a.D) * sizeof(float), s));
  NIBBLE_CUDA_CHECK(cudaMemsetAsync(a.dv, 0, size_t(a.T * a.Hkv * a.Dv) * sizeof(float), s));
  const size_t smem = size_t(2 * a.D + a.Dv) * sizeof(float);
  if (smem > 48 * 1024)
    NIBBLE_CUDA_CHECK(
        cudaFuncSetAttribute(attention_bwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cuda::launch(attention_bwd_kernel, dim3(unsigned(a.T), unsigned(a.Hq)), dim3(kThreads), smem, s, a);
}

}  // namespace nibble::cuda
