// Device helpers shared by the linear kernels: rounding to a compute dtype (the tags of
// quant_device.cuh, whose pack2 packs two values as a 16-bit pair; F32 leaves the value as is)
// and one bias element of a run-time dtype code (0 f32, 1 f16, 2 bf16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "backends/cuda/quant_device.cuh"

namespace nibble::cuda::dev {

template <class CT>
__device__ __forceinline__ float round_ct(float v) {
  if constexpr (std::is_same_v<CT, BF16>)
    return __bfloat162float(__float2bfloat16_rn(v));
  else if constexpr (std::is_same_v<CT, F16>)
    return __half2float(__float2half_rn(v));
  else
    return v;
}

__device__ __forceinline__ float load_bias(const void* bias, int bdt, int64_t n) {
  if (bdt == 1) return load1<F16>(bias, n);
  if (bdt == 2) return load1<BF16>(bias, n);
  return load1<F32>(bias, n);
}

}  // namespace nibble::cuda::dev
