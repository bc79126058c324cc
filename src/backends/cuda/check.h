// NIBBLE_CUDA_CHECK: every CUDA runtime call is checked; a failure throws nibble::Error
// naming the call, the error string, file and line. Include only from backend sources.
#pragma once

#include <cuda_runtime.h>

#include "nibble/error.h"

#define NIBBLE_CUDA_CHECK(call)                                                                   \
  do {                                                                                            \
    cudaError_t err_ = (call);                                                                    \
    if (err_ != cudaSuccess)                                                                      \
      throw ::nibble::Error(::nibble::detail::str("CUDA error: ", cudaGetErrorString(err_), " in ", #call, \
                                                  " at ", __FILE__, ":", __LINE__));              \
  } while (0)

#define NIBBLE_CUDA_CHECK_LAUNCH() NIBBLE_CUDA_CHECK(cudaGetLastError())
