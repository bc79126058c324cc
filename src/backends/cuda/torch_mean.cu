// torch's CUDA float32 mean, computed on the device in exactly the order of
// quant::torch_cuda_mean_f32 (quant/torch_mean.h, which documents torch's reduction): the
// offset of double quantization must match bitsandbytes bit for bit, and float addition is
// not associative. Deterministic by construction: each phase is its own kernel, every lane
// adds its elements in the reference's order, and the in-block trees are the reference's trees
// done step by step in shared memory with a barrier between steps.
//   phase 1: `ctas` CTAs of `bw` lanes -> one total per CTA   (scratch [ctas])
//   phase 2: one CTA of `bw` lanes: lane l sums totals l, l+bw, ... then the same tree,
//            times factor = 1.0f / float(n)
#include <limits>

#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/quant_launch.h"
#include "quant/torch_mean.h"

namespace nibble::cuda {

namespace {

// The reference's multiprocessor count (H100 SXM), so that GPU and CPU offsets agree.
constexpr int kTorchNumSms = 132;
constexpr int kMaxThreadsPerSm = 2048;

// s[0..bw) holds each lane's value (written before the call); returns the reference's
// block_reduce of it: halving steps down to 32, then min(bw, 32)/2 .. 1.
__device__ float block_tree(float* s) {
  const int bw = int(blockDim.x), l = int(threadIdx.x);
  __syncthreads();
  for (int off = bw / 2; off >= 32; off /= 2) {
    if (l < off) s[l] = __fadd_rn(s[l], s[l + off]);
    __syncthreads();
  }
  for (int off = min(bw, 32) / 2; off > 0; off /= 2) {
    if (l < off) s[l] = __fadd_rn(s[l], s[l + off]);
    __syncthreads();
  }
  return s[0];
}

// Vector v of x (elements 4v..4v+3): one 16-byte load when x is 16-byte aligned.
__device__ __forceinline__ float4 load_vec(const float* __restrict__ x, int64_t v, bool vec) {
  if (vec) return reinterpret_cast<const float4*>(x)[v];
  return make_float4(x[4 * v], x[4 * v + 1], x[4 * v + 2], x[4 * v + 3]);
}

// x: [n]; cta_total: [gridDim.x]. Thread (c, l) of bw * ctas threads.
__global__ void torch_mean_partial_kernel(const float* __restrict__ x, int64_t n, bool vectorized, bool vec,
                                          float* __restrict__ cta_total) {
  extern __shared__ float s[];  // [bw]
  const int64_t bw = blockDim.x, l = threadIdx.x, c = blockIdx.x;
  float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
  auto add = [&](float4 p) {
    a0 = __fadd_rn(a0, p.x);
    a1 = __fadd_rn(a1, p.y);
    a2 = __fadd_rn(a2, p.z);
    a3 = __fadd_rn(a3, p.w);
  };
  if (vectorized) {
    const int64_t nvec = n / 4, stride = bw * gridDim.x;
    int64_t v = c * bw + l;
    // four vectors' loads in flight before their adds, which stay in the reference's order
    for (; v + 3 * stride < nvec; v += 4 * stride) {
      const float4 p0 = load_vec(x, v, vec), p1 = load_vec(x, v + stride, vec),
                   p2 = load_vec(x, v + 2 * stride, vec), p3 = load_vec(x, v + 3 * stride, vec);
      add(p0);
      add(p1);
      add(p2);
      add(p3);
    }
    for (; v < nvec; v += stride) add(load_vec(x, v, vec));
    const int64_t rem = n % 4;
    if (c == 0 && l < rem) a0 = __fadd_rn(a0, x[n - rem + l]);
  } else {  // n < 128, one CTA: groups of four strided elements
    int64_t i = l;
    for (; i + 3 * bw < n; i += 4 * bw) add(make_float4(x[i], x[i + bw], x[i + 2 * bw], x[i + 3 * bw]));
    if (i < n) a0 = __fadd_rn(a0, x[i]);
    if (i + bw < n) a1 = __fadd_rn(a1, x[i + bw]);
    if (i + 2 * bw < n) a2 = __fadd_rn(a2, x[i + 2 * bw]);
  }
  s[l] = __fadd_rn(__fadd_rn(__fadd_rn(a0, a1), a2), a3);
  const float total = block_tree(s);
  if (l == 0) cta_total[c] = total;
}

// cta_total: [ctas]; *out = mean.
__global__ void torch_mean_final_kernel(const float* __restrict__ cta_total, int64_t ctas, float factor,
                                        float* __restrict__ out) {
  extern __shared__ float s[];  // [bw]
  if (ctas == 1) {
    if (threadIdx.x == 0) *out = __fmul_rn(cta_total[0], factor);
    return;
  }
  float acc = 0.0f;
  for (int64_t k = threadIdx.x; k < ctas; k += blockDim.x) acc = __fadd_rn(acc, cta_total[k]);
  s[threadIdx.x] = acc;
  const float total = block_tree(s);
  if (threadIdx.x == 0) *out = __fmul_rn(total, factor);
}

}  // namespace

namespace launch {

void torch_mean_f32(const float* x, int64_t n, float* out, void* stream) {
  cudaStream_t st = as_stream(stream);
  if (n <= 0) {  // torch: NaN
    const float nan = std::numeric_limits<float>::quiet_NaN();
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(out, &nan, sizeof(float), cudaMemcpyHostToDevice, st));
    NIBBLE_CUDA_CHECK(cudaStreamSynchronize(st));  // `nan` lives on this stack frame
    return;
  }
  namespace d = quant::torch_mean_detail;
  const d::Config cfg = d::make_config(n, kTorchNumSms, kMaxThreadsPerSm);
  const unsigned bw = unsigned(cfg.block_width);
  const float factor = 1.0f / static_cast<float>(n);  // the reference's host-side float factor
  float* cta_total = nullptr;
  NIBBLE_CUDA_CHECK(
      cudaMallocAsync(reinterpret_cast<void**>(&cta_total), size_t(cfg.ctas) * sizeof(float), st));
  torch_mean_partial_kernel<<<unsigned(cfg.ctas), bw, bw * sizeof(float), st>>>(x, n, cfg.vectorized,
                                                                                aligned(x, 16), cta_total);
  NIBBLE_CUDA_CHECK_LAUNCH();
  torch_mean_final_kernel<<<1, bw, bw * sizeof(float), st>>>(cta_total, cfg.ctas, factor, out);
  NIBBLE_CUDA_CHECK_LAUNCH();
  NIBBLE_CUDA_CHECK(cudaFreeAsync(cta_total, st));
}

}  // namespace launch

}  // namespace nibble::cuda
