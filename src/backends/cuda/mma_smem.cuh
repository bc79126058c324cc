// Shared-memory staging and ldmatrix fragment loads of the tensor-core attention kernels
// (attention_tc.cu, train_attention_tc.cu): 16-byte cp.async copies global -> shared that
// bypass L1 (zero-filled when out of range), and ldmatrix x4 (plain and transposed) of four
// 8 x 8 tiles of 16-bit elements, the A/B operands of mma.m16n8k16 (gemv_frag.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "backends/cuda/gemv_frag.cuh"
#include "nibble/error.h"

namespace nibble::cuda::dev {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src then unread).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Shared tiles of 16-bit rows, `pitch` elements apart (padded so ldmatrix is conflict-free).
// The three operand patterns of a warp's mma.m16n8k16 (rows of a tile start at `base`):
//   a_frag:   A [16 rows x 16 k] from rows r0.. at columns k0.. (row-major A, e.g. Q, dO, K)
//   b_pair:   B of n-blocks n and n+1 from rows n*8.. that hold B^T (an [n][k] tile, e.g. K as
//             keys x dims for S = Q K^T): b[0], b[1] for block n, b[2], b[3] for n + 1
//   bt_pair:  B of n-blocks n and n+1 from rows k0.. of a [k][n] tile (transposed load, e.g. V
//             as keys x dims for O = P V)
__device__ __forceinline__ void a_frag(uint32_t (&a)[4], const uint16_t* base, int pitch, int r0, int k0,
                                       int lane) {
  ldsm_x4(a, smem_addr(base + (r0 + (lane & 15)) * pitch + k0 + (lane >> 4) * 8));
}
__device__ __forceinline__ void b_pair(uint32_t (&b)[4], const uint16_t* base, int pitch, int n, int k0,
                                       int lane) {
  ldsm_x4(b,
          smem_addr(base + (n * 8 + (lane & 7) + ((lane >> 4) << 3)) * pitch + k0 + ((lane >> 3) & 1) * 8));
}
__device__ __forceinline__ void bt_pair(uint32_t (&b)[4], const uint16_t* base, int pitch, int n, int k0,
                                        int lane) {
  ldsm_x4_trans(
      b, smem_addr(base + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * pitch + n * 8 + (lane >> 4) * 8));
}

// acc (16 rows x N) += A · B for A the 16 x K matrix held as C fragments c[0 .. K/8) (the
// result layout of an earlier mma, e.g. softmax weights, rounded to KV) and B the K x N tile in
// shared rows from `base` (bt_pair: rows are the K index).
template <class KV, int K, int N>
__device__ __forceinline__ void mma_c_bt(float (&acc)[N / 8][4], const float (&c)[K / 8][4],
                                         const uint16_t* base, int pitch, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    const uint32_t a[4] = {pack2<KV>(c[2 * kk][0], c[2 * kk][1]), pack2<KV>(c[2 * kk][2], c[2 * kk][3]),
                           pack2<KV>(c[2 * kk + 1][0], c[2 * kk + 1][1]),
                           pack2<KV>(c[2 * kk + 1][2], c[2 * kk + 1][3])};
#pragma unroll
    for (int n = 0; n < N / 8; n += 2) {
      uint32_t b[4];
      bt_pair(b, base, pitch, n, kk * 16, lane);
      mma<KV>(acc[n], a, b[0], b[1]);
      mma<KV>(acc[n + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace nibble::cuda::dev

namespace nibble::cuda {

// The head dims the tensor-core attention kernels are built for, and f(std::integral_constant<int,
// D>) for one of them (InternalError naming `op` otherwise).
inline bool attention_tc_head_dim(int64_t D) {
  return D == 32 || D == 64 || D == 80 || D == 96 || D == 128;
}
template <class F>
void with_tc_head_dim(const char* op, int64_t D, F&& f) {
  switch (D) {
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 80:
      return f(std::integral_constant<int, 80>{});
    case 96:
      return f(std::integral_constant<int, 96>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    default:
      throw InternalError(detail::str(op, ": no tensor-core kernel for head dim ", D));
  }
}

}  // namespace nibble::cuda
