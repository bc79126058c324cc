// Storage allocation (64-byte aligned host memory, or CUDA memory through the backend's
// runtime hooks) and copy_bytes, the single place bytes cross between devices.
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "nibble/error.h"
#include "nibble/tensor.h"

#ifdef NIBBLE_WITH_CUDA
#include "backends/cuda/runtime.h"
#endif

namespace nibble {

using detail::str;

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device dev) {
  if (dev.is_cpu()) {
    // Large buffers are 2 MiB aligned and marked for transparent huge pages: a fresh 32 MiB
    // output then costs 16 page faults instead of 8192, which dominated whole-tensor ops.
    constexpr size_t kHuge = size_t(2) << 20;
    size_t align = nbytes >= kHuge ? kHuge : 64;
    size_t rounded = (std::max<size_t>(nbytes, 1) + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded);
    if (!p) throw Error(str("out of host memory allocating ", nbytes, " bytes"));
    if (align == kHuge) (void)madvise(p, rounded, MADV_HUGEPAGE);
    return std::make_shared<Storage>(p, nbytes, dev, std::shared_ptr<void>(p, std::free));
  }
#ifdef NIBBLE_WITH_CUDA
  int d = dev.index;
  if (d < 0 || d >= cuda::device_count())
    throw UnsupportedError(str("cannot allocate on ", dev.str(), ": ", cuda::device_count(), " CUDA device(s) visible"));
  void* stream = nullptr;
  void* p = cuda::device_malloc(std::max<size_t>(nbytes, 1), d, &stream);
  return std::make_shared<Storage>(p, nbytes, dev,
                                   std::shared_ptr<void>(p, [d, stream](void* q) { cuda::device_free(q, d, stream); }));
#else
  throw UnsupportedError(str("cannot allocate on ", dev.str(), ": this build has no CUDA backend"));
#endif
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) {
  if (n == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, n);
    return;
  }
#ifdef NIBBLE_WITH_CUDA
  if (src_dev.is_cpu()) cuda::memcpy_sync(dst, src, n, 0, dst_dev.index);
  else if (dst_dev.is_cpu()) cuda::memcpy_sync(dst, src, n, 1, src_dev.index);
  else {
    // the copy runs on the destination's stream: the source device's stream (where the bytes were
    // written, e.g. a split model's activations at a layer boundary) finishes first
    if (src_dev.index != dst_dev.index)
      cuda::stream_synchronize(cuda::thread_stream(src_dev.index), src_dev.index);
    cuda::memcpy_sync(dst, src, n, 2, dst_dev.index);
  }
#else
  throw UnsupportedError(str("copy between ", src_dev.str(), " and ", dst_dev.str(), ": this build has no CUDA backend"));
#endif
}

int cuda_device_count() {
#ifdef NIBBLE_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace nibble
