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
#include "backends/cuda/quant_device.cuh"
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

size_t row_state_bytes(int64_t T) {
  return 2 * align256(size_t(T) * sizeof(float)) + 2 * align256(size_t(T) * sizeof(double));
}

// The four [T] arrays of a RowState, carved from ws in this order: mx, tgt, sum, nll.
RowState row_state(char* ws, int64_t T) {
  RowState st;
  st.mx = reinterpret_cast<float*>(ws);
  ws += align256(size_t(T) * sizeof(float));
  st.tgt = reinterpret_cast<float*>(ws);
  ws += align256(size_t(T) * sizeof(float));
  st.sum = reinterpret_cast<double*>(ws);
  ws += align256(size_t(T) * sizeof(double));
  st.nll = reinterpret_cast<double*>(ws);
  return st;
}

__device__ __forceinline__ float capped(float x, float cap) {
  return cap > 0.0f ? cap * tanhf(x / cap) : x;
}

// x = capped(x, cap) in place; returns d(capped)/d(raw).
__device__ __forceinline__ float cap_in_place(float& x, float cap) {
  if (cap <= 0.0f) return 1.0f;
  const float t = tanhf(x / cap);
  x = cap * t;
  return 1.0f - t * t;
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

// Block per row: logits [T, nc] (columns v0 ..) -> G = (softmax - onehot) * grad_scale *
// d(capped)/d(raw), 0 on ignored rows; T = F32 writes G over the logits in place, a 16-bit T
// rounds it into g [T, nc] (the operand of dh = G W on the tensor cores).
template <class T>
__global__ void grad_chunk_kernel(float* logits, int64_t nc, int64_t v0, const int64_t* targets, float cap,
                                  float grad_scale, RowState st, void* g) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t r = blockIdx.x, y = targets[r];
  const float* lr = logits + r * nc;
  void* out = T::kBytes == 4 ? static_cast<void*>(logits + r * nc) : static_cast<char*>(g) + size_t(r * nc) * 2;
  if (y == -100) {
    for (int64_t v = threadIdx.x; v < nc; v += blockDim.x) dev::store1<T>(out, v, 0.0f);
    return;
  }
  const double lse = st.sum[r];
  for (int64_t v = threadIdx.x; v < nc; v += blockDim.x) {
    float x = lr[v];
    const float dcap = cap_in_place(x, cap);
    // a 16-bit G is rounded to 16 bits: f32 exp is ample there
    const float p = T::kBytes == 4 ? float(exp(double(x) - lse)) : expf(x - float(lse));
    dev::store1<T>(out, v, (p - (v0 + v == y ? 1.0f : 0.0f)) * grad_scale * dcap);
  }
}

constexpr int kRow16Threads = 1024;

// Block per row over whole rows [Tc, V] in one pass: each thread's running max and sum of
// exponentials (rescaled when its max grows), then the block's; the row's log-sum-exp into
// st.sum and its NLL into st.nll (0 for an ignored row).
__global__ void __launch_bounds__(kRow16Threads)
    lse_rows16_kernel(const float* logits, int64_t V, const int64_t* targets, float cap, RowState st) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float red[32];
  const int64_t r = blockIdx.x, y = targets[r];
  if (y == -100) {
    if (threadIdx.x == 0) st.nll[r] = 0.0;
    return;
  }
  const float* lr = logits + r * V;
  float m = -FLT_MAX, l = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = capped(lr[v], cap);
    if (x > m) {
      l = l * expf(m - x) + 1.0f;
      m = x;
    } else {
      l += expf(x - m);
    }
  }
  const float mx = dev::block_max(m, red);
  const float sum = dev::block_sum(l * expf(m - mx), red);
  if (threadIdx.x == 0) {
    const double lse = double(mx) + log(double(sum));
    st.sum[r] = lse;
    st.nll[r] = lse - double(capped(lr[y], cap));
  }
}

// Row-major C [M, N] (f32) = A [M, K] · op(B) with A, B 16-bit of dtype dt, f32 accumulation;
// trans_b: B stored [N, K], else [K, N].
void gemm16_f32out(const Launch& l, DType dt, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A,
                   const void* B, float* C) {
  cublasHandle_t h = cublas_handle(l.device);
  NIBBLE_CUBLAS_CHECK(cublasSetStream(h, as_stream(l.stream)));
  const cudaDataType_t t = dt == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  const float alpha = 1.0f, beta = 0.0f;
  NIBBLE_CUBLAS_CHECK(cublasGemmEx(h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, int(N), int(M), int(K),
                                   &alpha, B, t, int(trans_b ? K : N), A, t, int(K), &beta, C, CUDA_R_32F,
                                   int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
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

int64_t cross_entropy16_rows(int64_t T, int64_t V) {
  const int64_t fit = std::max<int64_t>(16, std::min<int64_t>(256, (int64_t(1) << 25) / std::max<int64_t>(V, 1)));
  return std::max<int64_t>(1, std::min(T, fit / 16 * 16));
}

size_t cross_entropy16_workspace_bytes(int64_t T, int64_t H, int64_t V) {
  const size_t t = size_t(T), rc = size_t(cross_entropy16_rows(T, V));
  return align256(t * size_t(H) * 2) + align256(rc * size_t(V) * sizeof(float)) + align256(rc * size_t(V) * 2) +
         row_state_bytes(T);
}

void cross_entropy_head16(const Launch& l, const float* h, int64_t T, int64_t H, const void* W, DType wdt,
                          int64_t V, const int64_t* targets, float softcap, float grad_scale, float* dh,
                          double* nll_host) {
  if (T == 0) return;
  if (wdt != DType::BF16 && wdt != DType::F16)
    throw InternalError("cuda::cross_entropy_head16: the head must be bf16 or f16");
  if (l.workspace_bytes < cross_entropy16_workspace_bytes(T, H, V))
    throw InternalError("cuda::cross_entropy_head16: workspace too small");
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
  const int64_t rc = cross_entropy16_rows(T, V);
  char* ws = static_cast<char*>(l.workspace);
  void* hb = ws;  // [T, H] h rounded to the head's dtype
  ws += align256(size_t(T) * size_t(H) * 2);
  float* logits = reinterpret_cast<float*>(ws);  // [rc, V]
  ws += align256(size_t(rc) * size_t(V) * sizeof(float));
  void* g = ws;  // [rc, V] the rows' gradient, 16-bit
  ws += align256(size_t(rc) * size_t(V) * 2);
  const RowState st = row_state(ws, T);
  copy_rows(l, h, H, T, H, hb, wdt, H);
  const size_t esz = 2;
  for (int64_t r0 = 0; r0 < T; r0 += rc) {
    const int64_t n = std::min(rc, T - r0);
    const RowState sr{st.mx + r0, st.sum + r0, st.tgt + r0, st.nll + r0};
    gemm16_f32out(l, wdt, true, n, V, H, static_cast<const char*>(hb) + size_t(r0 * H) * esz, W, logits);
    cuda::launch(lse_rows16_kernel, dim3(unsigned(n)), dim3(kRow16Threads), 0, s, logits, V, targets + r0,
                 softcap, sr);
    if (!dh) continue;
    if (wdt == DType::BF16)
      cuda::launch(grad_chunk_kernel<dev::BF16>, dim3(unsigned(n)), dim3(kRow16Threads), 0, s, logits, V,
                   int64_t(0), targets + r0, softcap, grad_scale, sr, g);
    else
      cuda::launch(grad_chunk_kernel<dev::F16>, dim3(unsigned(n)), dim3(kRow16Threads), 0, s, logits, V,
                   int64_t(0), targets + r0, softcap, grad_scale, sr, g);
    gemm16_f32out(l, wdt, false, n, H, V, g, W, dh + r0 * H);
  }
  NIBBLE_CUDA_CHECK(cudaMemcpyAsync(nll_host, st.nll, size_t(T) * sizeof(double), cudaMemcpyDeviceToHost, s));
  NIBBLE_CUDA_CHECK(cudaStreamSynchronize(s));
}

size_t cross_entropy_workspace_bytes(int64_t T, int64_t V, int64_t chunk) {
  const size_t t = size_t(T), cw = size_t(std::min(chunk, V));
  return align256(t * cw * sizeof(float)) + row_state_bytes(T);
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
  const RowState st = row_state(ws, T);
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
      cuda::launch(grad_chunk_kernel<dev::F32>, dim3(unsigned(T)), dim3(kRowThreads), 0, s, logits, nc, v0,
                   targets, softcap, grad_scale, st, nullptr);
      gemm_f32(l, false, false, T, H, nc, 1.0f, logits, nc, W + v0 * H, H, 1.0f, dh, H, tf32);
    }
  }
  NIBBLE_CUDA_CHECK(cudaMemcpyAsync(nll_host, st.nll, size_t(T) * sizeof(double), cudaMemcpyDeviceToHost, s));
  NIBBLE_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace nibble::cuda
