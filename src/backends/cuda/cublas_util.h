// The cuBLAS handle of the CUDA backend (one per thread and device, created on first use; each
// caller sets its stream) and NIBBLE_CUBLAS_CHECK. Internal to the backend's .cu files.
#pragma once

#include <cublas_v2.h>

#include "nibble/error.h"

#define NIBBLE_CUBLAS_CHECK(call)                                                               \
  do {                                                                                          \
    cublasStatus_t st_ = (call);                                                                \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                           \
      throw ::nibble::Error(::nibble::detail::str("cuBLAS error ", int(st_), " (",              \
                                                  cublasGetStatusString(st_), ") in ", #call)); \
  } while (0)

namespace nibble::cuda {

// Default math: tensor cores for 16-bit inputs; f32 inputs stay f32 (TF32 only on request).
cublasHandle_t cublas_handle(int device);

}  // namespace nibble::cuda
