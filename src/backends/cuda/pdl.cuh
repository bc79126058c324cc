// Programmatic dependent launch (sm_90 and later): a kernel launched with launch() below may
// start while the previous kernel of its stream is finishing, so its launch latency and any
// prologue on constant data overlap that kernel's tail. Every kernel launched this way calls
// pdl_wait() before it reads anything an earlier kernel wrote or writes anything one reads, and
// pdl_launch_dependents() to let the next one start early (both no-ops below sm_90 and when
// launched without the attribute). NIBBLE_PDL=0 turns the attribute off (benchmarks).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "backends/cuda/check.h"

namespace nibble::cuda {
namespace dev {

__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

}  // namespace dev

inline bool pdl_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("NIBBLE_PDL");
    if (v && std::strcmp(v, "0") == 0) return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
      return false;
    return major >= 9;
  }();
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch when enabled.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A&&... args) {
  if (pdl_enabled()) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    NIBBLE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<P>(args)...));
  } else {
    kernel<<<grid, block, smem, stream>>>(static_cast<P>(args)...);
    NIBBLE_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace nibble::cuda
