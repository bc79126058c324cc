// ExecContext: where an op runs — the device, the CUDA stream its kernels are enqueued on, and
// a reusable scratch workspace — passed to every op of the forward pass. One context per
// (thread, device): the forward pass of one sequence enqueues everything on its thread's
// stream, so two threads can run two sequences at once, and a decode step that reuses its
// buffers allocates nothing (it can be captured in a CUDA graph once the workspace has grown
// to its working size).
#pragma once

#include <cstddef>
#include <memory>

#include "nibble/tensor.h"

namespace nibble {

class ExecContext {
 public:
  // The calling thread's context for device d (created on first use).
  static ExecContext& current(Device d);

  Device device() const { return device_; }
  // cudaStream_t of this context (nullptr on the CPU).
  void* stream() const { return stream_; }
  // Scratch of at least n bytes on the device, valid until the next call that grows it; the
  // buffer only grows, so after the first steps this never allocates.
  void* workspace(size_t n);
  size_t workspace_bytes() const { return ws_.defined() ? ws_.nbytes() : 0; }
  // Waits for everything enqueued on this context (no-op on the CPU).
  void synchronize() const;

  explicit ExecContext(Device d);

 private:
  Device device_;
  void* stream_ = nullptr;
  Tensor ws_;
};

}  // namespace nibble
