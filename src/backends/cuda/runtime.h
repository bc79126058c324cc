// The CUDA runtime services the core needs (memory, copies, streams, device count), declared
// without CUDA headers so core code can call them. Defined in runtime.cpp, compiled only with
// CUDA.
//
// Memory: a caching allocator on CUDA's stream-ordered pools (cudaMallocAsync/cudaFreeAsync on
// the calling thread's stream; the device's default pool keeps freed blocks: release threshold
// = unlimited), so a forward pass costs no cudaMalloc/cudaFree after the first step.
// Streams: each thread has one (blocking) stream per device, so work of one thread is ordered and
// two threads (two sequences) run concurrently; the legacy-stream quantization kernels stay
// ordered with them because the streams are blocking.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nibble::cuda {

int device_count();  // 0 when no driver/device
// Free and total bytes of a device.
void mem_info(int device, size_t* free_bytes, size_t* total_bytes);
const char* device_name(int device);
// The current device's multiprocessor count.
int sm_count();

// The calling thread's stream on a device (created on first use), as cudaStream_t.
void* thread_stream(int device);
void stream_synchronize(void* stream, int device);

// Caching allocation on the calling thread's stream; free is stream-ordered on `stream` (the one
// returned in *stream at allocation).
void* device_malloc(size_t nbytes, int device, void** stream);
void device_free(void* p, int device, void* stream) noexcept;
// Pool statistics of a device: bytes in use now and their high-water mark since the last reset.
struct PoolStats {
  uint64_t used = 0, used_high = 0, reserved = 0;
};
PoolStats pool_stats(int device);
void reset_pool_peak(int device);

// Page-locked host memory (staging buffers for uploads).
void* host_pinned_malloc(size_t nbytes);
void host_pinned_free(void* p) noexcept;

// kind: 0 host->device, 1 device->host, 2 device->device. Enqueued on the calling thread's stream
// of `device` and waited for (synchronous for the caller).
void memcpy_sync(void* dst, const void* src, size_t n, int kind, int device);
// Enqueued on `stream` without waiting (host memory must be pinned to overlap).
void memcpy_async(void* dst, const void* src, size_t n, int kind, int device, void* stream);

// CUDA graphs of one stream's work (a decode step): capture what the calling thread enqueues
// on `stream` between begin and end (nothing may synchronise in between), then replay it.
void graph_capture_begin(void* stream);
void* graph_capture_end(void* stream);  // the instantiated graph (cudaGraphExec_t)
void graph_launch(void* exec, void* stream);
void graph_destroy(void* exec) noexcept;

}  // namespace nibble::cuda
