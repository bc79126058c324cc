// The f32 GEMM of the training pass through cuBLAS and the chunked causal-LM loss with the frozen
// head (train_cuda.h). The loss walks the vocabulary in chunks of `chunk` columns twice, as the
// host reference does: pass 1 keeps each row's running max and sum of exponentials (the online
// logsumexp), pass 2 recomputes the chunk's logits, turns them into (softmax - onehot) *
// grad_scale through the softcap in place, and adds that times the chunk of W into dh. The only
// logits buffer is [T, chunk] in the workspace.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "backends/cuda/cublas_util.h"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {
namespace {

constexpr int kRowThreads = 256;

size_t align256(size_t n) {
  return (n + 255) / 256 * 256;
}

// Per-row state of the online logsumexp, in the workspace after the logits.
struct RowState {
  float* mx;    // [T] running max
  double* sum;  // [T] running sum of exp(logit - mx)
  float* tgt;   // [T] the target's logit
  double* nll;  // [T] lse - target logit (0: ignored row)
};

__device__ __forceinline__ float capped(float x, float cap) {
  return cap > 0.0f ? cap * tanhf(x / cap) : x;
}

// Block per row over one chunk's raw logits [T, nc]: folds the chunk into the row's state.
__global__ void lse_chunk_kernel(const float* logits, int64_t nc, int64_t v0, const int64_t* targets,
                                 float cap, bool first, RowState st) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float red[32];
  const int64_t r = blockIdx.x, y = targets[r];
  if (y == -100) return;
  const float* lr = logits + r * nc;
  float cm = -FLT_MAX;
  for (int64_t v = threadIdx.x; v < nc; v += blockDim.x) cm = fmaxf(cm, capped(lr[v], cap));
  cm = dev::block_max(cm, red);
  const float old = first ? cm : st.mx[r];
  const float mx = fmaxf(old, cm);
  float s = 0.0f;
  for (int64_t v = threadIdx.x; v < nc; v += blockDim.x) {
    const float x = capped(lr[v], cap);
    s += expf(x - mx);
    if (v0 + v == y) st.tgt[r] = x;
  }
  s = dev::block_sum(s, red);
  if (threadIdx.x == 0) {
    st.sum[r] = (first ? 0.0 : st.sum[r] * exp(double(old) - double(mx))) + double(s);
    st.mx[r] = mx;
  }
}

__global__ void nll_kernel(const int64_t* targets, int64_t T, RowState st) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < T;
       r += int64_t(gridDim.x) * blockDim.x) {
    if (targets[r] == -100) {
      st.nll[r] = 0.0;
      continue;
    }
    const double lse = double(st.mx[r]) + log(st.sum[r]);
    st.nll[r] = lse - double(st.tgt[r]);
    st.sum[r] = lse;  // pass 2 reads the row's logsumexp here
  }
}

// Block per row: logits [T, nc] -> G = (softmax - onehot) * grad_scale * d(capped)/d(raw); 0 on
// ignored rows.
__global__ void grad_chunk_kernel(float* logits, int64_t nc, int64_t v0, const int64_t* targets, float cap,
                                  float grad_scale, RowState st) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t r = blockIdx.x, y = targets[r];
  float* lr = logits + r * nc;
  if (y == -100) {
    for (int64_t v = threadIdx.x; v < nc; v += blockDim.x) lr[v] = 0.0f;
    return;
  }
  const double lse = st.sum[r];
  for (int64_t v = threadIdx.x; v < nc; v += blockDim.x) {
    float x = lr[v], dcap = 1.0f;
    if (cap > 0.0f) {
      const float t = tanhf(x / cap);
      x = cap * t;
      dcap = 1.0f - t * t;
    }
    const float p = float(exp(double(x) - lse));
    lr[v] = (p - (v0 + v == y ? 1.0f : 0.0f)) * grad_scale * dcap;
  }
}

}  // namespace

void gemm_f32(const Launch& l, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
              bool tf32) {
  if (M == 0 || N == 0) return;
  DeviceScope ds(l.device);
  cublasHandle_t h = cublas_handle(l.device);
  NIBBLE_CUBLAS_CHECK(cublasSetStream(h, as_stream(l.stream)));
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap, each
  // keeping its own transpose flag (a row-major matrix read column-major is its transpose).
  const cublasOperation_t ob = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, oa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (tf32) {
    NIBBLE_CUBLAS_CHECK(cublasGemmEx(h, ob, oa, int(N), int(M), int(K), &alpha, B, CUDA_R_32F, int(ldb), A,
                                     CUDA_R_32F, int(lda), &beta, C, CUDA_R_32F, int(ldc),
                                     CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    return;
  }
  NIBBLE_CUBLAS_CHECK(
      cublasSgemm(h, ob, oa, int(N), int(M), int(K), &alpha, B, int(ldb), A, int(lda), &beta, C, int(ldc)));
}

size_t cross_entropy_workspace_bytes(int64_t T, int64_t V, int64_t chunk) {
  const size_t t = size_t(T), cw = size_t(std::min(chunk, V));
  return align256(t * cw * sizeof(float)) + 2 * align256(t * sizeof(float)) +
         2 * align256(t * sizeof(double));
}

void cross_entropy_head(const Launch& l, const float* h, int64_t T, int64_t H, const float* W, int64_t V,
                        const int64_t* targets, float softcap, int64_t chunk, float grad_scale, float* dh,
                        double* nll_host, bool tf32) {
  if (T == 0) return;
  if (l.workspace_bytes < cross_entropy_workspace_bytes(T, V, chunk))
    throw InternalError("cuda::cross_entropy_head: workspace too small");
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
  char* ws = static_cast<char*>(l.workspace);
  float* logits = reinterpret_cast<float*>(ws);
  ws += align256(size_t(T) * size_t(std::min(chunk, V)) * sizeof(float));
  RowState st;
  st.mx = reinterpret_cast<float*>(ws);
  ws += align256(size_t(T) * sizeof(float));
  st.tgt = reinterpret_cast<float*>(ws);
  ws += align256(size_t(T) * sizeof(float));
  st.sum = reinterpret_cast<double*>(ws);
  ws += align256(size_t(T) * sizeof(double));
  st.nll = reinterpret_cast<double*>(ws);
  const int64_t nchunks = (V + chunk - 1) / chunk;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t v0 = c * chunk, nc = std::min(chunk, V - v0);
    gemm_f32(l, false, true, T, nc, H, 1.0f, h, H, W + v0 * H, H, 0.0f, logits, nc, tf32);
    cuda::launch(lse_chunk_kernel, dim3(unsigned(T)), dim3(kRowThreads), 0, s, logits, nc, v0, targets,
                 softcap, c == 0, st);
  }
  cuda::launch(nll_kernel, dim3(grid_for(T)), dim3(256), 0, s, targets, T, st);
  if (dh) {
    NIBBLE_CUDA_CHECK(cudaMemsetAsync(dh, 0, size_t(T * H) * sizeof(float), s));
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t v0 = c * chunk, nc = std::min(chunk, V - v0);
      gemm_f32(l, false, true, T, nc, H, 1.0f, h, H, W + v0 * H, H, 0.0f, logits, nc, tf32);
      cuda::launch(grad_chunk_kernel, dim3(unsigned(T)), dim3(kRowThreads), 0, s, logits, nc, v0, targets,
                   softcap, grad_scale, st);
      gemm_f32(l, false, false, T, H, nc, 1.0f, logits, nc, W + v0 * H, H, 1.0f, dh, H, tf32);
    }
  }
  NIBBLE_CUDA_CHECK(cudaMemcpyAsync(nll_host, st.nll, size_t(T) * sizeof(double), cudaMemcpyDeviceToHost, s));
  NIBBLE_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace nibble::cuda
