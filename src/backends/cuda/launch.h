// What every CUDA forward-pass kernel entry point takes first: the stream to enqueue on and
// the caller's device workspace. Declared without CUDA headers (cudaStream_t is a pointer to
// the opaque struct CUstream_st), so the ops layer can include it in a CPU-only translation
// unit. Entry points enqueue work and return without synchronising; nothing inside them
// allocates (cudaMalloc) or synchronises, so a decode step can be captured in a CUDA graph.
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace nibble::cuda {

using Stream = CUstream_st*;

struct Launch {
  Stream stream = nullptr;       // nullptr: the legacy default stream
  int device = 0;                // the device every pointer of the call lives on (made current)
  void* workspace = nullptr;     // device scratch, at least workspace_bytes; owned by the caller
  size_t workspace_bytes = 0;
};

}  // namespace nibble::cuda
