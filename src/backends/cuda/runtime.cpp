// CUDA runtime hooks for the core: device count, allocation and synchronous copies, every
// call checked.
#include "backends/cuda/runtime.h"

#include <cuda_runtime.h>

#include "backends/cuda/check.h"

namespace nibble::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

void* device_malloc(size_t nbytes, int device) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  NIBBLE_CUDA_CHECK(cudaMalloc(&p, nbytes));
  return p;
}

void device_free(void* p, int device) noexcept {
  cudaSetDevice(device);
  cudaFree(p);
}

void memcpy_sync(void* dst, const void* src, size_t n, int kind, int device) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device));
  cudaMemcpyKind k = kind == 0 ? cudaMemcpyHostToDevice : kind == 1 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
  NIBBLE_CUDA_CHECK(cudaMemcpy(dst, src, n, k));
}

}  // namespace nibble::cuda
