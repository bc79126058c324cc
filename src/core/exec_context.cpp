// Per-thread, per-device execution contexts.
#include "core/exec_context.h"

#include <vector>

#include "nibble/error.h"

#ifdef NIBBLE_WITH_CUDA
#include "backends/cuda/runtime.h"
#endif

namespace nibble {

ExecContext::ExecContext(Device d) : device_(d) {
#ifdef NIBBLE_WITH_CUDA
  if (d.is_cuda()) stream_ = cuda::thread_stream(d.index);
#else
  if (d.is_cuda()) throw UnsupportedError(detail::str("cannot run on ", d.str(), ": this build has no CUDA backend"));
#endif
}

ExecContext& ExecContext::current(Device d) {
  thread_local ExecContext cpu_ctx{Device::cpu()};
  if (d.is_cpu()) return cpu_ctx;
  thread_local std::vector<std::unique_ptr<ExecContext>> cuda_ctx;
  if (d.index < 0 || d.index >= cuda_device_count())
    throw UnsupportedError(detail::str("cannot run on ", d.str(), ": ", cuda_device_count(), " CUDA device(s) visible"));
  if (int(cuda_ctx.size()) <= d.index) cuda_ctx.resize(size_t(d.index) + 1);
  if (!cuda_ctx[size_t(d.index)]) cuda_ctx[size_t(d.index)] = std::make_unique<ExecContext>(d);
  return *cuda_ctx[size_t(d.index)];
}

void* ExecContext::workspace(size_t n) {
  if (n == 0) return nullptr;
  if (!ws_.defined() || ws_.nbytes() < n) {
    size_t grow = std::max(n, workspace_bytes() + workspace_bytes() / 2);
    ws_ = Tensor();  // release first (stream-ordered), then take the larger block
    ws_ = Tensor::empty({int64_t(grow)}, DType::U8, device_);
  }
  return ws_.data_ptr();
}

void ExecContext::synchronize() const {
#ifdef NIBBLE_WITH_CUDA
  if (device_.is_cuda()) cuda::stream_synchronize(stream_, device_.index);
#endif
}

}  // namespace nibble
