// Pieces shared by the tensor-core decode GEMVs (gemv_mma.cu, gemv_lut.cu): one
// mma.m16n8k16 with f32 accumulation, streamed weight loads that bypass L1, and the B
// fragment of an x row.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "backends/cuda/quant_device.cuh"

namespace nibble::cuda::dev {

template <class CT>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<CT, dev::BF16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Streamed weight loads (16 and 8 bytes): read once, so kept out of L1 (x lives there).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ uint2 ld_stream8(const void* p) {
  uint2 r;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}

// B fragment of x row m at physical k (4 consecutive values), rounded to CT; zero rows >= M.
template <class CT>
__device__ __forceinline__ void x_frag(const float* __restrict__ x, int64_t K, bool live, int m, int64_t k,
                                       uint32_t& b0, uint32_t& b1) {
  if (live) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(x + m * K + k));
    b0 = pack2<CT>(v.x, v.y);
    b1 = pack2<CT>(v.z, v.w);
  } else {
    b0 = b1 = 0u;
  }
}

}  // namespace nibble::cuda::dev
