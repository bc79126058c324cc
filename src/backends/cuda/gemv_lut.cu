// The 4-bit decode GEMV with the absmax applied per block (gemv_lut.h). One warp computes a
// 16-row tile of W against up to 16 rows of x over a slice of K, 64 codes (one absmax block or
// a part of one) at a time, with mma.m16n8k16:
//
//   A (16 x 16) = code values of W rows (tile rows 0..15)   thread (g = lane/4, q = lane%4) holds
//   B (16 x 8)  = x rows 0..7 (8..15)                        tile rows g and g+8 of A, x row g
//   D (16 x 8)  = the tile's partial sums                    (g+8) of B; D rows g, g+8, x rows 2q, 2q+1
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
// Per batch of kU chunks a warp decodes the (nested) absmax of its 16 rows once (a lane: one
// row, four chunks) and shares them through shared memory, instead of every lane of a quad
// decoding the same two; x is staged in shared memory once a block, rounded to the compute
// dtype, when it fits (kXsBytes), so a k-step reads its B fragment with one 8-byte shared load.
//
// One launch may cover up to three weights of one K (q, k and v: tiles numbered across them),
// or a gate/up pair whose tile is 8 features of both (A rows g from gate, g + 8 from up), so
// the epilogue writes act(gate) * up directly.
//
// Blocks are persistent (at most as many as fit at once) and loop over groups of RG tiles, so
// the table is filled once a block. Warps of a block split K (KS slices) over RG = 8 / KS row
// tiles, summed in slice order through shared memory: results are deterministic. KS is chosen
// by a cost model: the fewest rounds of groups times chunks a warp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backends/cuda/act.cuh"
#include "backends/cuda/check.h"
#include "backends/cuda/compute_dtype.cuh"
#include "backends/cuda/gemv_frag.cuh"
#include "backends/cuda/gemv_lut.h"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/runtime.h"
#include "nibble/quant.h"

namespace nibble::cuda {
namespace {

using dev::ld_stream8;
using dev::load_bias;
using dev::mma;
using dev::pack2;
using dev::round_ct;

constexpr int kWarps = 8;
constexpr int kU = 8;          // chunks a row in flight per thread
constexpr int kRowWords = 64;  // a table row: 256 bytes, the first 32 words used
constexpr size_t kTableBytes = 256 * kRowWords * 4;
// x staged in shared memory when its M rows fit this: every block stages all of x (f32 reads,
// ~half the block's weight bytes again from L2), which paid at K <= 11008 (4096 x 4096 M=1:
// 9.5 us against 11.3 for the previous kernel) but not at K = 14336 (35.5 us against 28.9 on
// an H100), so larger x is read per k-step from L1 instead.
constexpr int64_t kXsBytes = 24 * 1024;
constexpr int kMaxMats = 3;

// One weight of a launch.
struct Mat {
  const uint8_t* w;
  const float* absmax;  // plain, or nullptr when nested
  const uint8_t* absmax_q;
  const float* absmax2;
  float offset;
  int64_t N;
  const void* bias;
  int bdt;
  float* out;
  int64_t tile_end;  // tiles of this weight and the ones before it
};

struct Args {
  const float* x;
  int M;
  int64_t K;
  const float* quant_map;
  float qmap[16];      // the same 16 code values by value (the pipelined kernel's table fill)
  const float* code2;  // one table for every nested weight (device_dynamic_map)
  int bs_log2;
  int nbs_log2;  // nested blocksize as a shift, -1 when not a power of two
  int64_t nested_bs;
  int nmat;
  bool gated;  // m[0] gate, m[1] up: a tile is 8 features, out = act(gate) * up into m[0].out
  Act act;
  Mat m[kMaxMats];
  int ks;             // K slices per row tile (1, 2, 4, 8)
  int64_t tiles;      // row tiles in all
  int64_t groups;     // groups of RG tiles
  int64_t xs_stride;  // elements a staged x row (K + 8); 0: x read from global memory
  bool pipe;          // gemv_pipe_kernel takes it (pipe_ok for every weight)
  Gemv4Rms rms;  // rms.h set: x = rms_norm(h + r) computed while staging (x unused)
};

size_t smem_bytes(int nt, int M, int64_t xs_stride) {
  return kTableBytes + 256 * 4 + size_t(kWarps) * 16 * kU * 4 + size_t(kWarps) * 32 * 4 * nt * 4 +
         size_t(xs_stride) * size_t(M) * 2;
}

// By value, from statically indexed parameters (a dynamic index or a reference into the
// parameter space would make the compiler copy Args to local memory).
__device__ __forceinline__ Mat mat_at(const Args& a, int i) {
  if (i == 0) return a.m[0];
  if (i == 1) return a.m[1];
  return a.m[2];
}

// The absmax of flat block `b` of weight `w`, decoded when nested (as the CPU backend decodes it).
__device__ __forceinline__ float absmax_of(const Args& a, const Mat& w, const float* code2, int64_t b) {
  if (w.absmax) return __ldg(w.absmax + b);
  const int64_t nb = a.nbs_log2 >= 0 ? b >> a.nbs_log2 : b / a.nested_bs;
  return dev::mul_ftz(code2[__ldg(w.absmax_q + b)], __ldg(w.absmax2 + nb)) + w.offset;
}

// Byte j of w as a table row, at this lane's word: (w.byte[j] << 8) | (lane << 2).
template <int J>
__device__ __forceinline__ uint32_t lookup(const char* table, uint32_t w, uint32_t lane4) {
  const uint32_t off = __byte_perm(w, lane4, 0x5504u | (unsigned(J) << 4));
  return *reinterpret_cast<const uint32_t*>(table + off);
}

// Tile row r (0..15) of tile t: its weight and row (clamped into the weight; rows past it are
// computed and never stored).
struct RowRef {
  int mat;
  int64_t row;
};
__device__ __forceinline__ RowRef tile_row(const Args& a, int64_t t, int r) {
  if (a.gated) {
    const int mi = r < 8 ? 0 : 1;
    return {mi, min(t * 8 + (r & 7), a.m[0].N - 1)};
  }
  const int mi = t < a.m[0].tile_end ? 0 : t < a.m[1].tile_end ? 1 : 2;
  const int64_t t0 = mi == 0 ? 0 : mat_at(a, mi - 1).tile_end;
  return {mi, min((t - t0) * 16 + r, mat_at(a, mi).N - 1)};
}

// x staged as ct(rms_norm(h + r)) (the formula of rms_norm_kernel, f32), h + r written by
// block 0; scratch: 32 floats of shared memory.
template <class CT>
__device__ __forceinline__ void stage_rms(const Args& a, uint16_t* xs, float* scratch, int tid) {
  const int k4 = int(a.K / 4), stride = int(a.xs_stride), nt = int(blockDim.x);
  for (int m = 0; m < a.M; ++m) {
    const float4* h = reinterpret_cast<const float4*>(a.rms.h + int64_t(m) * a.K);
    const float4* r = reinterpret_cast<const float4*>(a.rms.r + int64_t(m) * a.K);
    float ss = 0.0f;
    for (int i = tid; i < k4; i += nt) {
      const float4 u = h[i], v = r[i];
      const float x0 = u.x + v.x, x1 = u.y + v.y, x2 = u.z + v.z, x3 = u.w + v.w;
      ss += x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3;
    }
    const float inv = rsqrtf(dev::block_sum(ss, scratch) / float(a.K) + a.rms.eps);
    for (int i = tid; i < k4; i += nt) {
      const float4 u = h[i], v = r[i];
      const float4 x = make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w);
      if (blockIdx.x == 0) reinterpret_cast<float4*>(a.rms.h_out + int64_t(m) * a.K)[i] = x;
      float o[4];
      const float xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) o[j] = (load_bias(a.rms.w, a.rms.w_code, 4 * i + j) + a.rms.unit) * (xv[j] * inv);
      *reinterpret_cast<uint2*>(xs + m * stride + 4 * i) = make_uint2(pack2<CT>(o[0], o[1]), pack2<CT>(o[2], o[3]));
    }
  }
}

// The shared-memory prologue of both kernels: the pair table (each warp an equal run of rows, 4
// rows an instruction: 8 lanes x 16 bytes each; the code values from quant_map, or from the
// parameters when kParamMap), the nested-absmax code table, then (after the wait on the
// previous kernel, which wrote x) x staged in the compute dtype when XS (or computed,
// stage_rms); scratch: 32 floats of shared memory.
template <class CT, bool XS, bool kParamMap = false>
__device__ __forceinline__ void fill_shared(const Args& a, uint32_t* smem, float* code2, uint16_t* xs,
                                            int tid, int warp, int lane, float* scratch) {
  const int64_t K = a.K;
  {
    float v;
    if constexpr (kParamMap) {  // a select chain over static indices: no load in front of the fill
      v = a.qmap[0];
#pragma unroll
      for (int i = 1; i < 16; ++i) v = (lane & 15) == i ? a.qmap[i] : v;
    } else {
      v = __ldg(a.quant_map + (lane & 15));
    }
    const int rows = 256 / int(blockDim.x / 32);  // 8 or 16 warps: 32 or 16 rows each
    for (int r0 = rows * warp; r0 < rows * warp + rows; r0 += 4) {
      const int row = r0 + lane / 8;
      const float lo = __shfl_sync(0xffffffffu, v, row >> 4), hi = __shfl_sync(0xffffffffu, v, row & 15);
      const uint32_t p = pack2<CT>(lo, hi);
      reinterpret_cast<uint4*>(smem + row * kRowWords)[lane % 8] = make_uint4(p, p, p, p);
    }
    if (a.code2)
      for (int i = tid; i < 256; i += blockDim.x) code2[i] = a.code2[i];
    dev::pdl_wait();  // x is the previous kernel's output, out may be read by it
    if constexpr (XS) {
      if (a.rms.h) return stage_rms<CT>(a, xs, scratch, tid);
      // x fits kXsBytes, so M * K < 2^31: 32-bit indices, kXLoads loads in flight a thread
      constexpr int kXLoads = 4;
      const int k4 = int(K / 4), n4 = a.M * k4, stride = int(a.xs_stride);
      for (int i0 = tid; i0 < n4; i0 += kXLoads * int(blockDim.x)) {
        float4 v4[kXLoads];
#pragma unroll
        for (int j = 0; j < kXLoads; ++j) {
          const int i = i0 + j * int(blockDim.x);
          if (i < n4) v4[j] = __ldg(reinterpret_cast<const float4*>(a.x) + i);
        }
#pragma unroll
        for (int j = 0; j < kXLoads; ++j) {
          const int i = i0 + j * int(blockDim.x);
          if (i >= n4) break;
          const int m = i / k4, k = (i - m * k4) * 4;
          *reinterpret_cast<uint2*>(xs + m * stride + k) =
              make_uint2(pack2<CT>(v4[j].x, v4[j].y), pack2<CT>(v4[j].z, v4[j].w));
        }
      }
    }
  }
}

// One chunk (64 codes of the tile's 16 rows, 16 a quad lane pair) into d: four mma k-steps into
// a zeroed accumulator, then scaled row by row by the chunk's absmax.
template <int NT, class CT, bool XS>
__device__ __forceinline__ void chunk(const Args& a, const char* table, const uint16_t* xs, uint2 wa,
                                      uint2 wb, int64_t kq, float ama, float amb, bool live0, bool live1,
                                      int g, uint32_t lane4, float (&d)[NT][4]) {
  float tacc[NT][4] = {};
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    // bytes 2s, 2s + 1 of the thread's 8: codes kq + 4s .. kq + 4s + 3
    const uint32_t A = s < 2 ? wa.x : wa.y, B = s < 2 ? wb.x : wb.y;
    uint32_t af[4];
    if (s % 2 == 0) {
      af[0] = lookup<0>(table, A, lane4), af[2] = lookup<1>(table, A, lane4);
      af[1] = lookup<0>(table, B, lane4), af[3] = lookup<1>(table, B, lane4);
    } else {
      af[0] = lookup<2>(table, A, lane4), af[2] = lookup<3>(table, A, lane4);
      af[1] = lookup<2>(table, B, lane4), af[3] = lookup<3>(table, B, lane4);
    }
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      const int m = g + 8 * i;
      uint32_t b0 = 0u, b1 = 0u;
      if constexpr (XS) {
        if (i == 0 ? live0 : live1) {
          const uint2 v = *reinterpret_cast<const uint2*>(xs + m * a.xs_stride + kq + 4 * s);
          b0 = v.x, b1 = v.y;
        }
      } else {
        dev::x_frag<CT>(a.x, a.K, i == 0 ? live0 : live1, m, kq + 4 * s, b0, b1);
      }
      mma<CT>(tacc[i], af, b0, b1);
    }
  }
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    d[i][0] = fmaf(tacc[i][0], ama, d[i][0]);
    d[i][1] = fmaf(tacc[i][1], ama, d[i][1]);
    d[i][2] = fmaf(tacc[i][2], amb, d[i][2]);
    d[i][3] = fmaf(tacc[i][3], amb, d[i][3]);
  }
}

// The end of a row tile: its K slices summed in slice order through red (slice ks of row tile
// rt is warp rt + ks * RG), then slice 0 rounds and stores (act(gate) * up when gated).
template <int NT, class CT>
__device__ __forceinline__ void finish_tile(const Args& a, float* red, float (&d)[NT][4], int64_t t,
                                            bool tile_live, int mat, int warp, int lane, int rt, int ks,
                                            int RG, int g, int q) {
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
  if (ks == 0 && tile_live) {
    if (a.gated) {
      const int64_t F = a.m[0].N, n = t * 8 + g;
#pragma unroll
      for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int m = 8 * i + 2 * q + j;
          if (n >= F || m >= a.M) continue;
          float gv = d[i][j], uv = d[i][j + 2];
          if (a.m[0].bias) gv += round_ct<CT>(load_bias(a.m[0].bias, a.m[0].bdt, n));
          if (a.m[1].bias) uv += round_ct<CT>(load_bias(a.m[1].bias, a.m[1].bdt, n));
          a.m[0].out[int64_t(m) * F + n] = dev::act_f(round_ct<CT>(gv), a.act) * round_ct<CT>(uv);
        }
    } else {
      const int mi = mat;
      const Mat w = mat_at(a, mi);
      const int64_t n0 = (t - (mi == 0 ? 0 : mat_at(a, mi - 1).tile_end)) * 16;
#pragma unroll
      for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + g + (j >= 2 ? 8 : 0);
          const int m = 8 * i + 2 * q + (j & 1);
          if (n >= w.N || m >= a.M) continue;
          float v = d[i][j];
          if (w.bias) v += round_ct<CT>(load_bias(w.bias, w.bdt, n));
          w.out[int64_t(m) * w.N + n] = round_ct<CT>(v);
        }
    }
  }
}

template <int NT, class CT, bool XS>
__global__ void __launch_bounds__(kWarps * 32, 2) gemv_lut_kernel(Args a) {
  extern __shared__ __align__(16) uint32_t smem[];
  const char* table = reinterpret_cast<const char*>(smem);
  float* code2 = reinterpret_cast<float*>(smem + 256 * kRowWords);
  float* am_all = code2 + 256;                                             // [kWarps][16][kU]
  float* red = am_all + kWarps * 16 * kU;                                  // [kWarps][32][4 * NT]
  uint16_t* xs = reinterpret_cast<uint16_t*>(red + kWarps * 32 * 4 * NT);  // [M][xs_stride]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int RG = kWarps / a.ks;
  const int rt = warp % RG, ks = warp / RG;
  const int64_t K = a.K, chunks = K / 64;
  const int64_t c0 = chunks * ks / a.ks, c1 = chunks * (ks + 1) / a.ks;
  const bool live0 = g < a.M, live1 = g + 8 < a.M;
  const uint32_t lane4 = uint32_t(lane) << 2;
  float* am = am_all + warp * 16 * kU;
  dev::pdl_launch_dependents();

  fill_shared<CT, XS>(a, smem, code2, xs, tid, warp, lane, red);
  __syncthreads();

  for (int64_t grp = blockIdx.x; grp < a.groups; grp += gridDim.x) {
    const int64_t t_raw = grp * RG + rt;
    const bool tile_live = t_raw < a.tiles;
    const int64_t t = min(t_raw, a.tiles - 1);
    const RowRef ra = tile_row(a, t, g), rb = tile_row(a, t, g + 8);
    const Mat wa_m = mat_at(a, ra.mat), wb_m = mat_at(a, rb.mat);
    const uint8_t* pa = wa_m.w + ra.row * K / 2 + 8 * q;
    const uint8_t* pb = wb_m.w + rb.row * K / 2 + 8 * q;
    const RowRef rr = tile_row(a, t, lane >> 1);  // this lane's absmax row, chunks uh..uh+3
    const Mat wr_m = mat_at(a, rr.mat);
    const int uh = (lane & 1) * 4;
    float d[NT][4] = {};
    for (int64_t c = c0; c < c1; c += kU) {
      uint2 wa[kU], wb[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (c + u >= c1) break;
        wa[u] = ld_stream8(pa + (c + u) * 32);
        wb[u] = ld_stream8(pb + (c + u) * 32);
      }
      float4 mine;
      {
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t cu = c + uh + i;
          v[i] = cu < c1 ? absmax_of(a, wr_m, code2, (rr.row * K + cu * 64) >> a.bs_log2) : 0.0f;
        }
        mine = make_float4(v[0], v[1], v[2], v[3]);
      }
      __syncwarp();  // the previous batch's reads of am are done
      reinterpret_cast<float4*>(am)[lane] = mine;
      __syncwarp();
      float ama[kU], amb[kU];
      {
        const float4* a4 = reinterpret_cast<const float4*>(am);
        const float4 x0 = a4[2 * g], x1 = a4[2 * g + 1], y0 = a4[2 * g + 16], y1 = a4[2 * g + 17];
        ama[0] = x0.x, ama[1] = x0.y, ama[2] = x0.z, ama[3] = x0.w;
        ama[4] = x1.x, ama[5] = x1.y, ama[6] = x1.z, ama[7] = x1.w;
        amb[0] = y0.x, amb[1] = y0.y, amb[2] = y0.z, amb[3] = y0.w;
        amb[4] = y1.x, amb[5] = y1.y, amb[6] = y1.z, amb[7] = y1.w;
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (c + u >= c1) break;
        chunk<NT, CT, XS>(a, table, xs, wa[u], wb[u], (c + u) * 64 + 16 * q, ama[u], amb[u], live0, live1, g,
                          lane4, d);
      }
    }

    finish_tile<NT, CT>(a, red, d, t, tile_live, ra.mat, warp, lane, rt, ks, RG, g, q);
    if (a.ks > 1) __syncthreads();  // red is rewritten by the next group
  }
}

// ---- The pipelined kernel (blocksize 64, K % 256 == 0, plain or 256-nested absmax) ----------
// One block of kPW warps a multiprocessor. Each warp streams its stages (kPU chunks of its row
// tile's 16 rows, with their absmax bytes) into a ring of kStages slots in shared memory with
// cp.async, kStages - 1 stages ahead and across row-tile boundaries, so the weight stream does
// not stop while a stage is computed or a tile is reduced and stored. The first stages are
// issued before the table fill and the wait on the previous kernel (weights are constants).
// Stages start at multiples of kPU chunks, so a stage's 4 absmax bytes (one 32-bit word a row)
// and its nested absmax2 (one float a row) are aligned single copies.
constexpr int kPW = 16;
constexpr int kPU = 4;
constexpr int kStages = 3;
constexpr int kStageW = kPU * 16 * 32;      // weights: [kPU][16 rows][32 bytes]
constexpr int kStageBytes = kStageW + 256;  // + plain absmax [16][kPU] f32, or q words [16] + absmax2 [16]

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(uint32_t(__cvta_generic_to_shared(dst))),
               "l"(src));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(uint32_t(__cvta_generic_to_shared(dst))),
               "l"(src));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A warp's position in its sequence of stages (group grp: row tile grp * RG + rt; chunk c of its
// K slice) and, for the group being issued, this lane's sources: 16 bytes of row lane / 2 (half
// lane % 2) of each chunk; lanes 0-15 row lane's absmax (plain: 16 bytes; nested: the q word),
// lanes 16-31 row lane - 16's absmax2 (nested only). Set once a group, so a stage's issue is
// kPU + 1 copies and a few adds.
struct Issue {
  int64_t grp, c;
  const uint8_t* w;  // row lane / 2 at chunk 0, + half
  const char* am;    // plain absmax or q bytes of row lane & 15 at chunk 0; absmax2 base for lanes 16-31
  int64_t b0;        // absmax block of row lane & 15 at chunk 0
  int mode;          // 0: plain (lanes < 16), 1: q word (lanes < 16), 2: absmax2 (lanes >= 16), 3: none
};

__device__ __forceinline__ void issue_group(const Args& a, Issue& is, int rt, int RG, int lane) {
  if (is.grp >= a.groups) return;
  const int64_t t = min(is.grp * RG + rt, a.tiles - 1);
  const RowRef rw = tile_row(a, t, lane >> 1);
  is.w = mat_at(a, rw.mat).w + rw.row * (a.K / 2) + (lane & 1) * 16;
  const RowRef r = tile_row(a, t, lane & 15);
  const Mat m = mat_at(a, r.mat);
  is.b0 = r.row * (a.K / 64);
  if (m.absmax) {
    is.mode = lane < 16 ? 0 : 3;
    is.am = reinterpret_cast<const char*>(m.absmax + is.b0);
  } else {
    is.mode = lane < 16 ? 1 : 2;
    is.am = lane < 16 ? reinterpret_cast<const char*>(m.absmax_q + is.b0)
                      : reinterpret_cast<const char*>(m.absmax2);
  }
}

// Copy the stage at is.c into slot ([kPU][16][32] weights, then the absmax words).
__device__ __forceinline__ void issue_stage(const Issue& is, int lane, char* slot) {
  const uint8_t* src = is.w + is.c * 32;
  char* dst = slot + (lane >> 1) * 32 + (lane & 1) * 16;
#pragma unroll
  for (int u = 0; u < kPU; ++u) cp_async16(dst + u * 16 * 32, src + u * 32);
  char* adst = slot + kStageW;
  if (is.mode == 0)
    cp_async16(adst + lane * 16, is.am + is.c * 4);
  else if (is.mode == 1)
    cp_async4(adst + lane * 4, is.am + is.c);
  else if (is.mode == 2)
    cp_async4(adst + 64 + (lane - 16) * 4, is.am + ((is.b0 + is.c) >> 8) * 4);
}

template <int NT, class CT, bool XS>
__global__ void __launch_bounds__(kPW * 32, 1) gemv_pipe_kernel(Args a) {
  extern __shared__ __align__(16) uint32_t smem[];
  const char* table = reinterpret_cast<const char*>(smem);
  float* code2 = reinterpret_cast<float*>(smem + 256 * kRowWords);
  float* am_all = code2 + 256;                                    // [kPW][16][kPU]
  float* red = am_all + kPW * 16 * kPU;                           // [kPW][32][4 * NT]
  char* ring = reinterpret_cast<char*>(red + kPW * 32 * 4 * NT);  // [kPW][kStages][kStageBytes]
  uint16_t* xs = reinterpret_cast<uint16_t*>(ring + kPW * kStages * kStageBytes);  // [M][xs_stride]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int RG = kPW / a.ks;
  const int rt = warp % RG, ks = warp / RG;
  const int64_t stages = a.K / (64 * kPU);  // of the whole K
  const int64_t c0 = stages * ks / a.ks * kPU, c1 = stages * (ks + 1) / a.ks * kPU;
  const bool live0 = g < a.M, live1 = g + 8 < a.M;
  const uint32_t lane4 = uint32_t(lane) << 2;
  float* am = am_all + warp * 16 * kPU;
  char* my_ring = ring + warp * kStages * kStageBytes;
  dev::pdl_launch_dependents();

  Issue next{c0 < c1 ? int64_t(blockIdx.x) : a.groups, c0};  // an empty slice issues nothing
  issue_group(a, next, rt, RG, lane);
  auto advance = [&] {
    next.c += kPU;
    if (next.c >= c1) {
      next.c = c0, next.grp += gridDim.x;
      issue_group(a, next, rt, RG, lane);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (next.grp < a.groups) issue_stage(next, lane, my_ring + s * kStageBytes);
    cp_async_commit();
    advance();
  }

  fill_shared<CT, XS, true>(a, smem, code2, xs, tid, warp, lane, red);
  __syncthreads();

  int slot_c = 0, slot_i = kStages - 1;  // the ring slots computed and issued next
  for (int64_t grp = blockIdx.x; grp < a.groups; grp += gridDim.x) {
    const int64_t t_raw = grp * RG + rt;
    const bool tile_live = t_raw < a.tiles;
    const int64_t t = min(t_raw, a.tiles - 1);
    const int mat_a = tile_row(a, t, g).mat;
    const RowRef rr = tile_row(a, t, lane >> 1);  // this lane's absmax row, chunks 2 (lane % 2) + 0, 1
    const float offset = mat_at(a, rr.mat).offset;
    const bool plain = mat_at(a, rr.mat).absmax != nullptr;
    float d[NT][4] = {};
    for (int64_t c = c0; c < c1; c += kPU) {
      __syncwarp();  // every lane is done with the slot the next issue refills
      if (next.grp < a.groups) issue_stage(next, lane, my_ring + slot_i * kStageBytes);
      cp_async_commit();
      advance();
      cp_async_wait<kStages - 1>();
      __syncwarp();
      const char* slot = my_ring + slot_c * kStageBytes;
      slot_c = slot_c + 1 == kStages ? 0 : slot_c + 1;
      slot_i = slot_i + 1 == kStages ? 0 : slot_i + 1;
      {  // this lane's two absmax (row lane / 2, chunks h, h + 1), shared through am
        const int r = lane >> 1, h = (lane & 1) * 2;
        float2 v;
        if (plain) {
          v = *reinterpret_cast<const float2*>(slot + kStageW + r * 16 + h * 4);
        } else {
          const uint32_t qw = *reinterpret_cast<const uint32_t*>(slot + kStageW + r * 4);
          const float a2 = *reinterpret_cast<const float*>(slot + kStageW + 64 + r * 4);
          v.x = dev::mul_ftz(code2[(qw >> (8 * h)) & 0xFFu], a2) + offset;
          v.y = dev::mul_ftz(code2[(qw >> (8 * h + 8)) & 0xFFu], a2) + offset;
        }
        reinterpret_cast<float2*>(am)[lane] = v;
      }
      __syncwarp();
      const float4 ama = reinterpret_cast<const float4*>(am)[g],
                   amb = reinterpret_cast<const float4*>(am)[g + 8];
      const float am_a[kPU] = {ama.x, ama.y, ama.z, ama.w}, am_b[kPU] = {amb.x, amb.y, amb.z, amb.w};
#pragma unroll
      for (int u = 0; u < kPU; ++u) {
        const uint2 wa = *reinterpret_cast<const uint2*>(slot + (u * 16 + g) * 32 + 8 * q);
        const uint2 wb = *reinterpret_cast<const uint2*>(slot + (u * 16 + g + 8) * 32 + 8 * q);
        chunk<NT, CT, XS>(a, table, xs, wa, wb, (c + u) * 64 + 16 * q, am_a[u], am_b[u], live0, live1, g,
                          lane4, d);
      }
    }
    finish_tile<NT, CT>(a, red, d, t, tile_live, mat_a, warp, lane, rt, ks, RG, g, q);
    if (a.ks > 1) __syncthreads();  // red is rewritten by the next group
  }
}

// K slices per row tile: the fewest rounds of groups (persistent blocks) times chunks a warp,
// at least 4 chunks a slice; ties go to more slices.
int pick_slices(int64_t tiles, int64_t chunks, int64_t blocks) {
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int ks = 1; ks <= kWarps; ks *= 2) {
    if (ks > 1 && chunks < 4 * ks) break;
    const int64_t rg = kWarps / ks, groups = (tiles + rg - 1) / rg, rounds = (groups + blocks - 1) / blocks;
    const int64_t per = (chunks + ks - 1) / ks, batches = (per + kU - 1) / kU;
    const int64_t cost = rounds * (batches * kU + 4);
    if (cost <= best_cost) best_cost = cost, best = ks;
  }
  return best;
}

// Per kernel, size and device: the shared-memory opt-in done once, and the blocks that fit a
// multiprocessor.
template <int NT, class CT, bool XS>
int blocks_per_sm(size_t bytes) {
  static std::atomic<bool> opted[64];
  const int dev = opt_in_smem(gemv_lut_kernel<NT, CT, XS>, smem_bytes(NT, 16, 0) + kXsBytes, opted);
  // two blocks a multiprocessor when their shared memory fits (the registers always do)
  int per_sm = 0;
  NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
  return bytes * 2 + 2 * 1024 <= size_t(per_sm) ? 2 : 1;
}

template <int NT, class CT, bool XS>
void launch_lut(const Launch& l, Args a) {
  const size_t bytes = smem_bytes(NT, a.M, a.xs_stride);
  const int64_t blocks_max = int64_t(blocks_per_sm<NT, CT, XS>(bytes)) * sm_count();
  a.ks = pick_slices(a.tiles, a.K / 64, blocks_max);
  const int rg = kWarps / a.ks;
  a.groups = (a.tiles + rg - 1) / rg;
  const int64_t blocks = std::min<int64_t>(a.groups, blocks_max);
  // a programmatic dependent launch: the table fill overlaps the end of the previous kernel
  launch(gemv_lut_kernel<NT, CT, XS>, dim3(unsigned(blocks)), dim3(kWarps * 32), bytes, l.stream, a);
}

size_t pipe_smem_bytes(int nt, int M, int64_t xs_stride) {
  return kTableBytes + 256 * 4 + size_t(kPW) * 16 * kPU * 4 + size_t(kPW) * 32 * 4 * nt * 4 +
         size_t(kPW) * kStages * kStageBytes + size_t(xs_stride) * size_t(M) * 2;
}

// NIBBLE_GEMV4_KS (benchmarks): K slices for the pipelined kernel, 1-16 (a power of two), instead of
// pick_pipe_slices' choice; 0 or unset: the cost model.
int forced_pipe_slices() {
  static const int ks = [] {
    const char* v = std::getenv("NIBBLE_GEMV4_KS");
    const int n = v ? std::atoi(v) : 0;
    return n >= 1 && n <= kPW && (n & (n - 1)) == 0 ? n : 0;
  }();
  return ks;
}

// K slices for the pipelined kernel: each at least one stage; the fewest rounds of groups times
// (stages a warp + one for the tile's reduction and store), ties to more slices.
int pick_pipe_slices(int64_t tiles, int64_t stages, int64_t blocks) {
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int ks = 1; ks <= kPW && ks <= stages; ks *= 2) {
    const int64_t rg = kPW / ks, groups = (tiles + rg - 1) / rg, rounds = (groups + blocks - 1) / blocks;
    const int64_t cost = rounds * ((stages + ks - 1) / ks + 1);
    if (cost <= best_cost) best_cost = cost, best = ks;
  }
  return best;
}

template <int NT, class CT, bool XS>
void launch_pipe(const Launch& l, Args a) {
  const size_t bytes = pipe_smem_bytes(NT, a.M, a.xs_stride);
  static std::atomic<bool> opted[64];
  opt_in_smem(gemv_pipe_kernel<NT, CT, XS>, pipe_smem_bytes(NT, 16, 0) + kXsBytes, opted);
  const int64_t blocks_max = sm_count();
  a.ks = pick_pipe_slices(a.tiles, a.K / (64 * kPU), blocks_max);
  if (const int ks = forced_pipe_slices(); ks > 0 && ks <= a.K / (64 * kPU)) a.ks = ks;
  const int rg = kPW / a.ks;
  a.groups = (a.tiles + rg - 1) / rg;
  const int64_t blocks = std::min<int64_t>(a.groups, blocks_max);
  launch(gemv_pipe_kernel<NT, CT, XS>, dim3(unsigned(blocks)), dim3(kPW * 32), bytes, l.stream, a);
}

template <int NT, class CT, bool XS>
void launch_one(const Launch& l, const Args& a) {
  if (a.pipe)
    launch_pipe<NT, CT, XS>(l, a);
  else
    launch_lut<NT, CT, XS>(l, a);
}

template <class CT>
void launch_ct(const Launch& l, Args& a) {
  const bool xs = int64_t(a.M) * (a.K + 8) * 2 <= kXsBytes;
  a.xs_stride = xs ? a.K + 8 : 0;
  if (a.M <= 8) {
    if (xs)
      launch_one<1, CT, true>(l, a);
    else
      launch_one<1, CT, false>(l, a);
  } else {
    if (xs)
      launch_one<2, CT, true>(l, a);
    else
      launch_one<2, CT, false>(l, a);
  }
}

// NIBBLE_GEMV4 (benchmarks): "mma" sends these calls to gemv_mma.cu, "lut" keeps them off the
// pipelined kernel.
const char* gemv4_env() {
  static const char* v = std::getenv("NIBBLE_GEMV4");
  return v ? v : "";
}
bool forced_off() {
  return std::strcmp(gemv4_env(), "mma") == 0;
}

bool aligned(const void* p, uintptr_t n) {
  return reinterpret_cast<uintptr_t>(p) % n == 0;
}

// The pipelined kernel's layout: blocks of 64 (a stage's absmax in one aligned copy a row),
// K % 256 == 0 (whole stages, aligned), the nested absmax in blocks of 256.
bool pipe_ok(int64_t K, const Quant4Weight& w) {
  if (std::strcmp(gemv4_env(), "lut") == 0 || w.blocksize != 64 || K % 256 != 0 || !aligned(w.packed, 16))
    return false;
  if (w.absmax) return aligned(w.absmax, 16);
  return w.nested_blocksize == 256 && aligned(w.absmax_q, 4) && aligned(w.absmax2, 4);
}

int log2_of(int64_t v) {
  int s = 0;
  while ((int64_t(1) << s) < v) ++s;
  return s;
}

Args base_args(const float* x, int64_t M, int64_t K, const Quant4Weight& w) {
  Args a{};
  a.x = x, a.M = int(M), a.K = K;
  a.quant_map = w.quant_map, a.code2 = nullptr;
  std::copy_n(dequant_table_4bit(w.quant_type), 16, a.qmap);
  a.bs_log2 = log2_of(w.blocksize);
  a.nested_bs = w.nested_blocksize;
  a.nbs_log2 = w.nested_blocksize > 0 && (w.nested_blocksize & (w.nested_blocksize - 1)) == 0
                   ? log2_of(w.nested_blocksize)
                   : -1;
  return a;
}

Mat mat_of(const Quant4Weight& w, int64_t N, const void* bias, int bias_code, float* out) {
  Mat m{};
  m.w = w.packed, m.absmax = w.absmax, m.absmax_q = w.absmax_q, m.absmax2 = w.absmax2, m.offset = w.offset;
  m.N = N, m.bias = bias, m.bdt = bias_code, m.out = out;
  return m;
}

void run(const Launch& l, Args& a, DType ct) {
  if (ct == DType::BF16)
    launch_ct<dev::BF16>(l, a);
  else
    launch_ct<dev::F16>(l, a);
}

}  // namespace

bool gemv_lut_4bit_ok(int64_t M, int64_t K, const Quant4Weight& w, DType ct, const float* x) {
  return M >= 1 && M <= 16 && K % 64 == 0 && (ct == DType::BF16 || ct == DType::F16) && w.blocksize >= 64 &&
         reinterpret_cast<uintptr_t>(w.packed) % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         !forced_off();
}

bool gemv_lut_4bit_group_ok(int64_t M, int64_t K, std::span<const Gemv4Target> ts, DType ct, const float* x) {
  if (ts.empty() || ts.size() > size_t(kMaxMats)) return false;
  const Quant4Weight& w0 = *ts[0].w;
  for (const Gemv4Target& t : ts) {
    const Quant4Weight& w = *t.w;
    if (!gemv_lut_4bit_ok(M, K, w, ct, x) || w.blocksize != w0.blocksize || w.quant_type != w0.quant_type ||
        (w.absmax == nullptr) != (w0.absmax == nullptr) || w.code2 != w0.code2 ||
        (!w.absmax && w.nested_blocksize != w0.nested_blocksize))
      return false;
  }
  return true;
}

void gemv_lut_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
                   const void* bias, int bias_code, DType ct, float* out) {
  const Gemv4Target t{&w, N, bias, bias_code, out};
  gemv_lut_4bit_group(l, x, M, K, std::span<const Gemv4Target>(&t, 1), ct);
}

namespace {
void set_rms(Args& a, const Gemv4Rms* rms) {
  if (!rms) return;
  if (!gemv_lut_4bit_rms_ok(a.M, a.K) || !rms->h || !rms->r || !rms->w || !rms->h_out)
    throw InternalError("gemv_lut_4bit: a fused RMSNorm input the launch cannot stage");
  a.rms = *rms;
}
}  // namespace

bool gemv_lut_4bit_rms_ok(int64_t M, int64_t K) {
  return M >= 1 && M <= 16 && K % 4 == 0 && M * (K + 8) * 2 <= kXsBytes;
}

void gemv_lut_4bit_group(const Launch& l, const float* x, int64_t M, int64_t K,
                         std::span<const Gemv4Target> ts, DType ct, const Gemv4Rms* rms) {
  Args a = base_args(x, M, K, *ts[0].w);
  set_rms(a, rms);
  a.code2 = ts[0].w->absmax ? nullptr : ts[0].w->code2;
  a.nmat = int(ts.size());
  int64_t tiles = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    a.m[i] = mat_of(*ts[i].w, ts[i].N, ts[i].bias, ts[i].bias_code, ts[i].out);
    tiles += (ts[i].N + 15) / 16;
    a.m[i].tile_end = tiles;
  }
  for (int i = a.nmat; i < kMaxMats; ++i) a.m[i].tile_end = tiles;
  a.tiles = tiles;
  a.pipe = std::all_of(ts.begin(), ts.end(), [&](const Gemv4Target& t) { return pipe_ok(K, *t.w); });
  run(l, a, ct);
}

void gemv_lut_4bit_gated(const Launch& l, const float* x, int64_t M, int64_t K, const Gemv4Target& gate,
                         const Gemv4Target& up, Act act, DType ct, float* out, const Gemv4Rms* rms) {
  Args a = base_args(x, M, K, *gate.w);
  set_rms(a, rms);
  a.code2 = gate.w->absmax ? nullptr : gate.w->code2;
  a.nmat = 2;
  a.gated = true;
  a.act = act;
  a.m[0] = mat_of(*gate.w, gate.N, gate.bias, gate.bias_code, out);
  a.m[1] = mat_of(*up.w, up.N, up.bias, up.bias_code, nullptr);
  a.tiles = (gate.N + 7) / 8;
  a.m[0].tile_end = a.m[1].tile_end = a.m[2].tile_end = a.tiles;
  a.pipe = pipe_ok(K, *gate.w) && pipe_ok(K, *up.w);
  run(l, a, ct);
}

}  // namespace nibble::cuda
