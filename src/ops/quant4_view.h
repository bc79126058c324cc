// The CUDA backend's view of a bitsandbytes 4-bit weight on the device (the stored, possibly
// nested, absmax as is), shared by the ops that hand such a weight to a CUDA kernel. A template so
// that CPU-only builds, which never instantiate the CUDA branches of ops::dispatch, never
// reference the CUDA symbols it uses.
#pragma once

#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/quant_cuda.h"
#include "nibble/quant.h"
#include "nibble/tensor.h"

namespace nibble::ops {

template <class T = Tensor>
cuda::Quant4Weight quant4_weight(const T& packed, const QuantState4& state) {
  cuda::Quant4Weight w;
  w.packed = packed.template data<uint8_t>();
  w.blocksize = state.blocksize;
  w.quant_type = state.quant_type;
  if (state.nested) {
    w.absmax_q = state.absmax.template data<uint8_t>();
    w.absmax2 = state.nested_absmax.template data<float>();
    w.code2 = cuda::device_dynamic_map();
    w.offset = state.offset;
    w.nested_blocksize = state.nested_blocksize;
  } else {
    w.absmax = state.absmax.template data<float>();
  }
  w.quant_map = cuda::device_quant_map(state.quant_type);
  return w;
}

}  // namespace nibble::ops
