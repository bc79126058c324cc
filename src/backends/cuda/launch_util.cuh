// Host-side helpers for the CUDA quantization backend: stream casts, the device guard that
// makes the pointers' device current for the duration of a public call, and the final wait
// that makes those calls synchronous.
#pragma once

#include <atomic>
#include <cstdint>

#include <cuda_runtime.h>

#include "backends/cuda/check.h"
#include "backends/cuda/quant_device.cuh"
#include "nibble/dtype.h"
#include "nibble/error.h"

namespace nibble::cuda {

inline cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}

inline bool aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Makes the device owning `p` current (tensors on cuda:1 may be passed while cuda:0 is
// current) and restores the previous device on exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(const void* p) {
    cudaPointerAttributes at{};
    NIBBLE_CUDA_CHECK(cudaPointerGetAttributes(&at, p));
    if (at.type != cudaMemoryTypeDevice) return;
    int cur = 0;
    NIBBLE_CUDA_CHECK(cudaGetDevice(&cur));
    if (cur != at.device) {
      NIBBLE_CUDA_CHECK(cudaSetDevice(at.device));
      prev_ = cur;
    }
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

// A kernel's shared-memory opt-in up to max_bytes, once a device (opted: that kernel's flags);
// returns the current device.
template <class Kernel>
int opt_in_smem(Kernel kernel, size_t max_bytes, std::atomic<bool> (&opted)[64]) {
  int dev = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&dev));
  const int slot = dev >= 0 && dev < 64 ? dev : 0;
  if (!opted[slot].load(std::memory_order_relaxed)) {
    NIBBLE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(max_bytes)));
    opted[slot].store(true, std::memory_order_relaxed);
  }
  return dev;
}

// Calls f(tag) with the element-type tag (dev::F32/F16/BF16) of a float dtype.
template <class F>
void with_float_dtype(const char* op, DType dt, F&& f) {
  switch (dt) {
    case DType::F32:
      f(dev::F32{});
      return;
    case DType::F16:
      f(dev::F16{});
      return;
    case DType::BF16:
      f(dev::BF16{});
      return;
    default:
      throw UnsupportedError(detail::str(op, ": no CUDA kernel for dtype ", dtype_name(dt)));
  }
}

// The public entry points are synchronous: wait for the legacy default stream, surfacing any
// asynchronous kernel fault here, at the call that caused it.
inline void finish() {
  NIBBLE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

}  // namespace nibble::cuda
