// The GPU's measured rates the benchmarks set their floors by (device-to-device copy bandwidth,
// bf16 GEMM rate), shared by model_gpu and train_gpu. CUDA builds only; header-only.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "backends/cuda/check.h"
#include "random_model.h"

namespace nibble::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Device-to-device copy of 1 GiB, bytes read + written per second.
inline double copy_bandwidth() {
  const size_t n = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  NIBBLE_CUDA_CHECK(cudaMalloc(&a, n));
  NIBBLE_CUDA_CHECK(cudaMalloc(&b, n));
  NIBBLE_CUDA_CHECK(cudaMemset(a, 1, n));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  std::vector<double> t;
  for (int r = 0; r < 13; ++r) {
    cudaEventRecord(e0);
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r >= 3) t.push_back(ms * 1e-3);
  }
  cudaFree(a), cudaFree(b);
  return 2.0 * double(n) / median(t);
}

// cuBLAS bf16 GEMM 8192^3 (f32 accumulation) on random data, FLOP/s.
inline double matmul_rate() {
  const int n = 8192;
  const size_t bytes = size_t(n) * n * 2;
  std::vector<uint16_t> h(size_t(n) * n);
  fill_normal_bf16(h.data(), int64_t(h.size()), 1.0f, 7);
  void *a = nullptr, *b = nullptr, *c = nullptr;
  NIBBLE_CUDA_CHECK(cudaMalloc(&a, bytes));
  NIBBLE_CUDA_CHECK(cudaMalloc(&b, bytes));
  NIBBLE_CUDA_CHECK(cudaMalloc(&c, bytes));
  NIBBLE_CUDA_CHECK(cudaMemcpy(a, h.data(), bytes, cudaMemcpyHostToDevice));
  NIBBLE_CUDA_CHECK(cudaMemcpy(b, h.data(), bytes, cudaMemcpyHostToDevice));
  cublasHandle_t hd;
  cublasCreate(&hd);
  const float one = 1.0f, zero = 0.0f;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  std::vector<double> t;
  for (int r = 0; r < 13; ++r) {
    cudaEventRecord(e0);
    cublasGemmEx(hd, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &zero, c,
                 CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r >= 3) t.push_back(ms * 1e-3);
  }
  cublasDestroy(hd);
  cudaFree(a), cudaFree(b), cudaFree(c);
  return 2.0 * double(n) * n * n / median(t);
}

}  // namespace nibble::bench
