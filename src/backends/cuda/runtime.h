// The CUDA runtime services the core needs (memory, copies, device count), declared without
// CUDA headers so core code can call them. Defined in runtime.cpp, compiled only with CUDA.
#pragma once

#include <cstddef>

namespace nibble::cuda {

int device_count();                     // 0 when no driver/device
void* device_malloc(size_t nbytes, int device);
void device_free(void* p, int device) noexcept;
// kind: 0 host->device, 1 device->host, 2 device->device (synchronous)
void memcpy_sync(void* dst, const void* src, size_t n, int kind, int device);

}  // namespace nibble::cuda
