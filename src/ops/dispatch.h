// The one (device, dtype) dispatch helper every op goes through: the device all of an op's
// tensors share, then either the CPU kernel or the CUDA kernel (given a Launch: the context's
// stream, device and workspace). A CUDA tensor in a build without the CUDA backend, a tensor
// on another device than the context's, or a mix of devices is an error naming the op.
//
// The CUDA branch is a generic lambda instantiated only when NIBBLE_WITH_CUDA is defined, so
// CPU-only builds never reference a CUDA symbol.
#pragma once

#include <functional>
#include <initializer_list>

#include "backends/cuda/launch.h"
#include "core/exec_context.h"
#include "nibble/error.h"
#include "nibble/tensor.h"

namespace nibble::ops {

using TensorRefs = std::initializer_list<std::reference_wrapper<const Tensor>>;

// Checks that every defined tensor lives on ctx's device.
inline void check_device(const char* op, const ExecContext& ctx, TensorRefs ts) {
  for (const Tensor& t : ts)
    if (t.defined() && t.device() != ctx.device())
      throw ShapeError(detail::str(op, ": ", t.str(), " is not on ", ctx.device().str(),
                                   " (every input and output of an op must be on the context's device)"));
}

// The device of the first defined tensor (the one an allocating op's result goes to).
inline Device device_of(TensorRefs ts) {
  for (const Tensor& t : ts)
    if (t.defined()) return t.device();
  return Device::cpu();
}

inline cuda::Launch make_launch(ExecContext& ctx, size_t workspace_bytes) {
  cuda::Launch l;
  l.stream = static_cast<cuda::Stream>(ctx.stream());
  l.device = ctx.device().index;
  l.workspace = ctx.workspace(workspace_bytes);
  l.workspace_bytes = workspace_bytes;
  return l;
}

// cpu_fn() on the CPU; cuda_fn(ctx) on CUDA (it builds its Launch with make_launch once it
// knows its workspace size).
template <typename CpuFn, typename CudaFn>
void dispatch(const char* op, ExecContext& ctx, DType dt, TensorRefs ts, CpuFn&& cpu_fn, CudaFn&& cuda_fn) {
  check_device(op, ctx, ts);
  if (ctx.device().is_cpu()) {
    cpu_fn();
    return;
  }
#ifdef NIBBLE_WITH_CUDA
  if (ctx.device().is_cuda()) {
    cuda_fn(ctx);
    return;
  }
#else
  (void)cuda_fn;
#endif
  throw UnsupportedError(detail::str(op, ": no kernel for (", ctx.device().str(), ", ", dtype_name(dt), ")"));
}

}  // namespace nibble::ops
