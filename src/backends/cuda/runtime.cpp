// CUDA runtime hooks for the core: device queries, the caching (stream-ordered pool) allocator,
// per-thread streams and copies, every call checked.
#include "backends/cuda/runtime.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cuda/check.h"
#include "nibble/thread_pool.h"

namespace nibble::cuda {

int device_count() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky "no device" error
      return 0;
    }
    return c;
  }();
  return n;
}

void mem_info(int device, size_t* free_bytes, size_t* total_bytes) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device));
  NIBBLE_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

const char* device_name(int device) {
  static std::mutex mu;
  static std::vector<std::string> names;
  std::lock_guard<std::mutex> lock(mu);
  if (names.empty()) {
    for (int d = 0; d < device_count(); ++d) {
      cudaDeviceProp p{};
      NIBBLE_CUDA_CHECK(cudaGetDeviceProperties(&p, d));
      names.emplace_back(p.name);
    }
  }
  return device >= 0 && device < int(names.size()) ? names[size_t(device)].c_str() : "?";
}

namespace {

// Keeps freed blocks in the device's default pool instead of returning them to the driver.
void init_pool(int device) {
  static std::once_flag flags[64];
  std::call_once(flags[device & 63], [device] {
    cudaMemPool_t pool;
    NIBBLE_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;
    NIBBLE_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  });
}

// A thread's streams are never destroyed: memory is freed stream-ordered on the stream it was
// allocated on (device_free), and that may happen after the allocating thread has ended — a
// model's decode buffers made on a server's scheduler thread and freed with the model, or the
// thread's own ExecContext workspace, whose thread_local dies after this one. Destroying them at
// thread exit made cudaFreeAsync use a destroyed stream (a crash when `nibble serve` stopped on
// the GPU). One stream a thread that ever ran CUDA work is what this keeps.
struct ThreadStreams {
  std::vector<cudaStream_t> s;
};

}  // namespace

void* thread_stream(int device) {
  thread_local ThreadStreams ts;
  if (int(ts.s.size()) <= device) ts.s.resize(size_t(device) + 1, nullptr);
  if (!ts.s[size_t(device)]) {
    NIBBLE_CUDA_CHECK(cudaSetDevice(device));
    NIBBLE_CUDA_CHECK(cudaStreamCreate(&ts.s[size_t(device)]));
  }
  return ts.s[size_t(device)];
}

void stream_synchronize(void* stream, int device) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device));
  NIBBLE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void* device_malloc(size_t nbytes, int device, void** stream) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device));
  init_pool(device);
  void* st = thread_stream(device);
  void* p = nullptr;
  cudaError_t e = cudaMallocAsync(&p, nbytes, static_cast<cudaStream_t>(st));
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    throw Error(detail::str("CUDA out of memory on cuda:", device, ": asked for ", nbytes, " bytes, ", fr,
                            " of ", tot, " bytes free"));
  }
  NIBBLE_CUDA_CHECK(e);
  *stream = st;
  return p;
}

void device_free(void* p, int device, void* stream) noexcept {
  cudaSetDevice(device);
  cudaFreeAsync(p, static_cast<cudaStream_t>(stream));
}

PoolStats pool_stats(int device) {
  init_pool(device);
  cudaMemPool_t pool;
  NIBBLE_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  PoolStats s;
  NIBBLE_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &s.used));
  NIBBLE_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &s.used_high));
  NIBBLE_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &s.reserved));
  return s;
}

void reset_pool_peak(int device) {
  init_pool(device);
  cudaMemPool_t pool;
  NIBBLE_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t zero = 0;
  NIBBLE_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero));
}

void* host_pinned_malloc(size_t nbytes) {
  void* p = nullptr;
  NIBBLE_CUDA_CHECK(cudaMallocHost(&p, nbytes));
  return p;
}

void host_pinned_free(void* p) noexcept {
  cudaFreeHost(p);
}

namespace {
cudaMemcpyKind kind_of(int kind) {
  return kind == 0 ? cudaMemcpyHostToDevice : kind == 1 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
}
}  // namespace

void memcpy_async(void* dst, const void* src, size_t n, int kind, int device, void* stream) {
  NIBBLE_CUDA_CHECK(cudaSetDevice(device));
  NIBBLE_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, kind_of(kind), static_cast<cudaStream_t>(stream)));
}

namespace {

// Large uploads from pageable (e.g. mmap'd) memory go through two pinned staging buffers: the
// host threads copy chunk i + 1 into one while the DMA engine moves chunk i out of the other,
// so disk/page cache, host copy and PCIe overlap instead of running one after the other.
constexpr size_t kStageBytes = size_t(32) << 20;

struct Staging {
  void* buf[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {nullptr, nullptr};
  int device = -1;
  ~Staging() {
    for (int i = 0; i < 2; ++i) {
      if (buf[i]) cudaFreeHost(buf[i]);
      if (done[i]) cudaEventDestroy(done[i]);
    }
  }
};

bool is_pinned(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

void upload_staged(void* dst, const void* src, size_t n, int device, cudaStream_t st) {
  thread_local Staging s;
  if (s.device != device) {
    for (int i = 0; i < 2; ++i) {
      if (!s.buf[i]) NIBBLE_CUDA_CHECK(cudaMallocHost(&s.buf[i], kStageBytes));
      if (s.done[i]) cudaEventDestroy(s.done[i]);
      NIBBLE_CUDA_CHECK(cudaEventCreateWithFlags(&s.done[i], cudaEventDisableTiming));
    }
    s.device = device;
  }
  const char* from = static_cast<const char*>(src);
  char* to = static_cast<char*>(dst);
  int b = 0;
  for (size_t off = 0; off < n; off += kStageBytes, b ^= 1) {
    const size_t len = std::min(kStageBytes, n - off);
    NIBBLE_CUDA_CHECK(cudaEventSynchronize(s.done[b]));  // the DMA out of this buffer has finished
    char* stage = static_cast<char*>(s.buf[b]);
    const int64_t piece = int64_t(1) << 20;
    parallel_for((int64_t(len) + piece - 1) / piece, 1, [&](int64_t p0, int64_t p1) {
      const size_t a = size_t(p0 * piece), e = std::min(len, size_t(p1 * piece));
      std::memcpy(stage + a, from + off + a, e - a);
    });
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(to + off, stage, len, cudaMemcpyHostToDevice, st));
    NIBBLE_CUDA_CHECK(cudaEventRecord(s.done[b], st));
  }
}

}  // namespace

void memcpy_sync(void* dst, const void* src, size_t n, int kind, int device) {
  void* st = thread_stream(device);
  if (kind == 0 && n >= 2 * kStageBytes && !is_pinned(src)) {
    NIBBLE_CUDA_CHECK(cudaSetDevice(device));
    upload_staged(dst, src, n, device, static_cast<cudaStream_t>(st));
  } else {
    memcpy_async(dst, src, n, kind, device, st);
  }
  NIBBLE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(st)));
}

void graph_capture_begin(void* stream) {
  NIBBLE_CUDA_CHECK(
      cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal));
}

void* graph_capture_end(void* stream) {
  cudaGraph_t g = nullptr;
  NIBBLE_CUDA_CHECK(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &g));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  NIBBLE_CUDA_CHECK(err);
  return exec;
}

void graph_launch(void* exec, void* stream) {
  NIBBLE_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(stream)));
}

void graph_destroy(void* exec) noexcept {
  if (exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

// Asked once per device (the decode kernels call it on every step).
int sm_count() {
  static std::atomic<int> counts[64];
  int dev = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  int n = counts[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    counts[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

}  // namespace nibble::cuda
