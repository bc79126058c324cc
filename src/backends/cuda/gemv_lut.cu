// The 4-bit decode GEMV with the absmax applied per block (gemv_lut.h). One warp computes a
// 16-row tile of W against up to 16 rows of x over a slice of K, 64 codes (one absmax block or
// a part of one) at a time, with mma.m16n8k16:
//
//   A (16 x 16) = code values of W rows n0..n0+15   thread (g = lane/4, q = lane%4) holds rows
//   B (16 x 8)  = x rows 0..7 (8..15)                g and g+8 of A, x row g (g+8) of B
//   D (16 x 8)  = the tile's partial sums            rows n0+g, n0+g+8; x rows 2q, 2q+1
//
// Thread q of a quad loads 8 bytes (16 codes) of each of its two rows at chunk offset 8q, so a
// quad reads a chunk's 32 bytes a row and every mma k-step (4 codes a thread) lies in one absmax
// block. A chunk's four k-steps go to a zeroed accumulator, which is then scaled row by row by
// the block's absmax and added to the tile's sums.
//
// The pair table: row b (a packed byte: code k in the high nibble, k+1 in the low one) holds
// the pair {ct(value[b >> 4]), ct(value[b & 15])} as the mma wants it, repeated for the 32
// lanes: lane l reads word l of a 256-byte row, so every lane of a lookup hits its own bank.
// One byte permute builds the address (b << 8 | l << 2), one shared load gives two A elements.
//
// Blocks are persistent (at most as many as fit at once) and loop over 16-row groups, so the
// 32 KB table is filled once a block. Warps of a block split K (KS slices) over RG = 8 / KS row
// tiles, summed in slice order through shared memory: results are deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backends/cuda/check.h"
#include "backends/cuda/compute_dtype.cuh"
#include "backends/cuda/gemv_frag.cuh"
#include "backends/cuda/gemv_lut.h"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/runtime.h"

namespace nibble::cuda {
namespace {

using dev::ld_stream8;
using dev::load_bias;
using dev::mma;
using dev::pack2;
using dev::round_ct;
using dev::x_frag;

constexpr int kWarps = 8;
constexpr int kU = 8;          // chunks a row in flight per thread
constexpr int kRowWords = 64;  // a table row: 256 bytes, the first 32 words used
constexpr size_t kTableBytes = 256 * kRowWords * 4;

struct Args {
  const float* x;
  int M;
  int64_t K, N;
  const uint8_t* w;
  const float* absmax;  // plain, or nullptr when nested
  const uint8_t* absmax_q;
  const float* absmax2;
  const float* code2;
  const float* quant_map;
  float offset;
  int bs_log2;
  int nbs_log2;  // nested blocksize as a shift, -1 when not a power of two
  int64_t nested_bs;
  const void* bias;
  int bdt;
  float* out;
  int ks;          // K slices per row tile (1, 2, 4, 8)
  int64_t groups;  // row groups of RG tiles
};

size_t smem_bytes(int nt) {
  return kTableBytes + 256 * 4 + size_t(kWarps) * 32 * 4 * nt * 4;
}

// The absmax of flat block `b`, decoded when nested (as the CPU backend decodes it).
__device__ __forceinline__ float absmax_of(const Args& a, const float* code2, int64_t b) {
  if (a.absmax) return __ldg(a.absmax + b);
  const int64_t nb = a.nbs_log2 >= 0 ? b >> a.nbs_log2 : b / a.nested_bs;
  return dev::mul_ftz(code2[__ldg(a.absmax_q + b)], __ldg(a.absmax2 + nb)) + a.offset;
}

// Byte j of w as a table row, at this lane's word: (w.byte[j] << 8) | (lane << 2).
template <int J>
__device__ __forceinline__ uint32_t lookup(const char* table, uint32_t w, uint32_t lane4) {
  const uint32_t off = __byte_perm(w, lane4, 0x5504u | (unsigned(J) << 4));
  return *reinterpret_cast<const uint32_t*>(table + off);
}

template <int NT, class CT>
__global__ void __launch_bounds__(kWarps * 32, 2) gemv_lut_kernel(Args a) {
  extern __shared__ __align__(16) uint32_t smem[];
  const char* table = reinterpret_cast<const char*>(smem);
  float* code2 = reinterpret_cast<float*>(smem + 256 * kRowWords);
  float* red = code2 + 256;  // [kWarps][32][4 * NT]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int RG = kWarps / a.ks;
  const int rt = warp % RG, ks = warp / RG;
  const int64_t N = a.N, K = a.K, chunks = K / 64;
  const int64_t c0 = chunks * ks / a.ks, c1 = chunks * (ks + 1) / a.ks;
  const bool live0 = g < a.M, live1 = g + 8 < a.M;
  const uint32_t lane4 = uint32_t(lane) << 2;

  {  // the table: warp w fills rows 32w..32w+31, 4 rows an instruction (8 lanes x 16 bytes each)
    const float v = __ldg(a.quant_map + (lane & 15));
    for (int r0 = 32 * warp; r0 < 32 * warp + 32; r0 += 4) {
      const int row = r0 + lane / 8;
      const float lo = __shfl_sync(0xffffffffu, v, row >> 4), hi = __shfl_sync(0xffffffffu, v, row & 15);
      const uint32_t p = pack2<CT>(lo, hi);
      reinterpret_cast<uint4*>(smem + row * kRowWords)[lane % 8] = make_uint4(p, p, p, p);
    }
    if (!a.absmax) code2[tid] = a.code2[tid];  // blockDim == 256
  }
  __syncthreads();

  for (int64_t grp = blockIdx.x; grp < a.groups; grp += gridDim.x) {
    const int64_t n0 = (grp * RG + rt) * 16;
    const int64_t ra = min(n0 + g, N - 1), rb = min(n0 + g + 8, N - 1);  // clamped: rows >= N unused
    const uint8_t* pa = a.w + ra * K / 2 + 8 * q;
    const uint8_t* pb = a.w + rb * K / 2 + 8 * q;
    float d[NT][4] = {};
    for (int64_t c = c0; c < c1; c += kU) {
      uint2 wa[kU], wb[kU];
      float ama[kU], amb[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (c + u >= c1) break;
        wa[u] = ld_stream8(pa + (c + u) * 32);
        wb[u] = ld_stream8(pb + (c + u) * 32);
        ama[u] = absmax_of(a, code2, (ra * K + (c + u) * 64) >> a.bs_log2);
        amb[u] = absmax_of(a, code2, (rb * K + (c + u) * 64) >> a.bs_log2);
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (c + u >= c1) break;
        float t[NT][4] = {};
        const int64_t kq = (c + u) * 64 + 16 * q;
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          // bytes 2s, 2s + 1 of the thread's 8: codes kq + 4s .. kq + 4s + 3
          const uint32_t A = s < 2 ? wa[u].x : wa[u].y, B = s < 2 ? wb[u].x : wb[u].y;
          uint32_t af[4];
          if (s % 2 == 0) {
            af[0] = lookup<0>(table, A, lane4), af[2] = lookup<1>(table, A, lane4);
            af[1] = lookup<0>(table, B, lane4), af[3] = lookup<1>(table, B, lane4);
          } else {
            af[0] = lookup<2>(table, A, lane4), af[2] = lookup<3>(table, A, lane4);
            af[1] = lookup<2>(table, B, lane4), af[3] = lookup<3>(table, B, lane4);
          }
          uint32_t b0, b1;
          x_frag<CT>(a.x, K, live0, g, kq + 4 * s, b0, b1);
          mma<CT>(t[0], af, b0, b1);
          if constexpr (NT == 2) {
            x_frag<CT>(a.x, K, live1, g + 8, kq + 4 * s, b0, b1);
            mma<CT>(t[1], af, b0, b1);
          }
        }
#pragma unroll
        for (int i = 0; i < NT; ++i) {
          d[i][0] = fmaf(t[i][0], ama[u], d[i][0]);
          d[i][1] = fmaf(t[i][1], ama[u], d[i][1]);
          d[i][2] = fmaf(t[i][2], amb[u], d[i][2]);
          d[i][3] = fmaf(t[i][3], amb[u], d[i][3]);
        }
      }
    }

    // sum the K slices of each row tile in slice order, then round and store
    if (a.ks > 1) {
#pragma unroll
      for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) red[(warp * 32 + lane) * 4 * NT + 4 * i + j] = d[i][j];
      __syncthreads();
      if (ks == 0)
        for (int s = 1; s < a.ks; ++s)
#pragma unroll
          for (int i = 0; i < NT; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) d[i][j] += red[((rt + s * RG) * 32 + lane) * 4 * NT + 4 * i + j];
    }
    if (ks == 0) {
#pragma unroll
      for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + g + (j >= 2 ? 8 : 0);
          const int m = 8 * i + 2 * q + (j & 1);
          if (n >= N || m >= a.M) continue;
          float v = d[i][j];
          if (a.bias) v += round_ct<CT>(load_bias(a.bias, a.bdt, n));
          a.out[int64_t(m) * N + n] = round_ct<CT>(v);
        }
    }
    if (a.ks > 1) __syncthreads();  // red is rewritten by the next group
  }
}

// K slices per 16-row tile: enough warps to keep HBM busy, at least 4 chunks per slice.
int pick_slices(int64_t N, int64_t chunks) {
  const int64_t tiles = (N + 15) / 16;
  int ks = 1;
  while (ks < kWarps && tiles * ks < 4096 && chunks >= 4 * ks) ks *= 2;
  return ks;
}

// Per kernel and device: the shared-memory opt-in done and the blocks that fit a multiprocessor.
template <int NT, class CT>
int blocks_per_sm() {
  static std::atomic<int> fit[64];
  int dev = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  int n = fit[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    const size_t bytes = smem_bytes(NT);
    NIBBLE_CUDA_CHECK(cudaFuncSetAttribute(gemv_lut_kernel<NT, CT>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    NIBBLE_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_lut_kernel<NT, CT>, kWarps * 32, bytes));
    n = std::max(n, 1);
    fit[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

template <int NT, class CT>
void launch(const Launch& l, Args a) {
  const int64_t blocks = std::min<int64_t>(a.groups, int64_t(blocks_per_sm<NT, CT>()) * sm_count());
  gemv_lut_kernel<NT, CT><<<unsigned(blocks), kWarps * 32, smem_bytes(NT), l.stream>>>(a);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

bool forced_off() {
  static const bool off = [] {
    const char* v = std::getenv("NIBBLE_GEMV4");
    return v && std::strcmp(v, "mma") == 0;
  }();
  return off;
}

}  // namespace

bool gemv_lut_4bit_ok(int64_t M, int64_t K, const Quant4Weight& w, DType ct, const float* x) {
  return M >= 1 && M <= 16 && K % 64 == 0 && (ct == DType::BF16 || ct == DType::F16) && w.blocksize >= 64 &&
         reinterpret_cast<uintptr_t>(w.packed) % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         !forced_off();
}

void gemv_lut_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
                   const void* bias, int bias_code, DType ct, float* out) {
  Args a{};
  a.x = x, a.M = int(M), a.K = K, a.N = N, a.w = w.packed;
  a.absmax = w.absmax, a.absmax_q = w.absmax_q, a.absmax2 = w.absmax2, a.code2 = w.code2;
  a.quant_map = w.quant_map, a.offset = w.offset, a.nested_bs = w.nested_blocksize;
  while ((int64_t(1) << a.bs_log2) < w.blocksize) ++a.bs_log2;
  a.nbs_log2 = -1;
  if (w.nested_blocksize > 0 && (w.nested_blocksize & (w.nested_blocksize - 1)) == 0) {
    a.nbs_log2 = 0;
    while ((int64_t(1) << a.nbs_log2) < w.nested_blocksize) ++a.nbs_log2;
  }
  a.bias = bias, a.bdt = bias_code, a.out = out;
  a.ks = pick_slices(N, K / 64);
  const int rg = kWarps / a.ks;
  a.groups = (N + 16 * rg - 1) / (16 * rg);
  if (ct == DType::BF16) {
    if (M <= 8)
      launch<1, dev::BF16>(l, a);
    else
      launch<2, dev::BF16>(l, a);
  } else {
    if (M <= 8)
      launch<1, dev::F16>(l, a);
    else
      launch<2, dev::F16>(l, a);
  }
}

}  // namespace nibble::cuda
