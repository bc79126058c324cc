// The rank-r products of a LoRA adapter's training pass (train_cuda.h), for r <= kLoraRank:
//   lora_down:   out [M, r]  = alpha · X [M, K] · W^T (+ beta · out)   h = x A^T, dh = s dy B
//   lora_reduce: G   [r, K]  = alpha · Y [M, r]^T · X [M, K] (+ beta · G)   dA = dh^T x, dB = s (h^T dy)^T
// Both read the large operand X once, coalesced, with f32 fused multiply-adds (no TF32 rounding),
// and sum deterministically: each block writes its partial sums to the workspace and a second
// kernel adds them in a fixed order. cuBLAS runs these shapes (an inner or outer dimension of 16)
// as split-K GEMMs with a reduction launch each, well below the copy bandwidth.
//
// lora_down: a block of 8 warps takes 32 rows (4 a warp) and one slice of K; W's slice is staged
// in shared memory 128 columns at a time ([j][k], zero past r and K), a lane takes 4 columns of
// each of its warp's rows (one 16-byte load a row) and keeps 4 x 16 sums, reduced over the warp
// at the end.
// lora_reduce: a block takes 64 columns of X (2 a lane) and a run of at most 128 rows, its Y rows
// staged in shared memory; warp w takes rows w, w + 8, ...; the 8 warps' sums are added in warp
// order through shared memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backends/cuda/check.h"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/runtime.h"
#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {
namespace {

constexpr int kR = kLoraRank;  // ranks a kernel computes (the rest zero)
constexpr int kDownRows = 4;   // rows a warp
constexpr int kChunk = 128;    // columns of K a stage (32 lanes x 4)
constexpr int kRedRows = 128;  // rows a reduce block
constexpr int kRedCols = 64;   // columns a reduce block (32 lanes x 2)

struct DownSplit {
  int64_t row_blocks, splits, cols;  // cols: K a split (a multiple of kChunk)
};
DownSplit down_split(int64_t M, int64_t K) {
  DownSplit d;
  d.row_blocks = ceil_div(M, 8 * kDownRows);
  const int64_t chunks = ceil_div(K, kChunk);
  const int64_t want = std::clamp<int64_t>(ceil_div(2 * sm_count(), d.row_blocks), 1, chunks);
  d.cols = ceil_div(chunks, want) * kChunk;
  d.splits = ceil_div(K, d.cols);
  return d;
}

struct RedSplit {
  int64_t col_blocks, splits, rows;
};
RedSplit red_split(int64_t M, int64_t K) {
  RedSplit d;
  d.col_blocks = ceil_div(K, kRedCols);
  const int64_t want = std::max(ceil_div(M, kRedRows), ceil_div(2 * sm_count(), d.col_blocks));
  d.rows = std::min<int64_t>(kRedRows, ceil_div(M, std::max<int64_t>(want, 1)));
  d.rows = std::max<int64_t>(d.rows, 1);
  d.splits = ceil_div(M, d.rows);
  return d;
}

// part [splits][M][kR]
__global__ void __launch_bounds__(256)
    lora_down_kernel(const float* X, int64_t ldx, int M, int K, const float* W, int64_t wj, int64_t wk, int r,
                     int cols, float* part) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float4 Ws[kR][kChunk / 4];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = (blockIdx.x * 8 + warp) * kDownRows;
  const int kb = blockIdx.y * cols, ke = min(K, kb + cols);
  float acc[kDownRows][kR] = {};
  for (int k0 = kb; k0 < ke; k0 += kChunk) {
    __syncthreads();  // the previous stage is read
    for (int i = threadIdx.x; i < kR * kChunk; i += 256) {
      // W [r, K] (wk == 1): consecutive threads along k; W^T of [K, r] (wj == 1): along j
      const int j = wk == 1 ? i / kChunk : i % kR, kk = wk == 1 ? i % kChunk : i / kR;
      const int k = k0 + kk;
      reinterpret_cast<float*>(Ws)[j * kChunk + kk] = j < r && k < ke ? __ldg(W + j * wj + k * wk) : 0.0f;
    }
    __syncthreads();
    const int k = k0 + 4 * lane;
    float4 xv[kDownRows];
#pragma unroll
    for (int rr = 0; rr < kDownRows; ++rr) {
      const int m = m0 + rr;
      xv[rr] = m < M && k < ke ? __ldg(reinterpret_cast<const float4*>(X + m * ldx + k))
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int j = 0; j < kR; ++j) {
      const float4 w = Ws[j][lane];
#pragma unroll
      for (int rr = 0; rr < kDownRows; ++rr) {
        float a = acc[rr][j];
        a = fmaf(xv[rr].x, w.x, a);
        a = fmaf(xv[rr].y, w.y, a);
        a = fmaf(xv[rr].z, w.z, a);
        a = fmaf(xv[rr].w, w.w, a);
        acc[rr][j] = a;
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kDownRows; ++rr)
#pragma unroll
    for (int j = 0; j < kR; ++j) {
      float v = acc[rr][j];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      const int m = m0 + rr;
      if (lane == (rr * kR + j) % 32 && m < M) part[(int64_t(blockIdx.y) * M + m) * kR + j] = v;
    }
}

// out[m, j] = alpha · sum over splits in order (+ beta · out), j < r
__global__ void lora_down_sum_kernel(const float* part, int splits, int M, int r, float alpha, float beta,
                                     float* out, int64_t ldo) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t n = int64_t(M) * r;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / r, j = i % r;
    float s = 0.0f;
    for (int t = 0; t < splits; ++t) s += part[(int64_t(t) * M + m) * kR + j];
    float* o = out + m * ldo + j;
    *o = beta == 0.0f ? alpha * s : fmaf(beta, *o, alpha * s);
  }
}

// part [splits][kR][K]
__global__ void __launch_bounds__(256)
    lora_reduce_kernel(const float* Y, int64_t ldy, const float* X, int64_t ldx, int M, int K, int r,
                       int rows, float* part) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float Ys[kRedRows][kR];
  __shared__ float red[8][kR][kRedCols];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int mb = blockIdx.y * rows, me = min(M, mb + rows);
  for (int i = threadIdx.x; i < kRedRows * kR; i += 256) {
    const int mm = i / kR, j = i % kR, m = mb + mm;
    Ys[mm][j] = m < me && j < r ? __ldg(Y + m * ldy + j) : 0.0f;
  }
  __syncthreads();
  const int k = blockIdx.x * kRedCols + 2 * lane;
  float acc[2][kR] = {};
  for (int m = mb + warp; m < me; m += 8) {
    const float2 x =
        k < K ? __ldg(reinterpret_cast<const float2*>(X + m * ldx + k)) : make_float2(0.0f, 0.0f);
    const float4* y4 = reinterpret_cast<const float4*>(Ys[m - mb]);
#pragma unroll
    for (int q = 0; q < kR / 4; ++q) {
      const float4 y = y4[q];
      const float yv[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        acc[0][4 * q + t] = fmaf(yv[t], x.x, acc[0][4 * q + t]);
        acc[1][4 * q + t] = fmaf(yv[t], x.y, acc[1][4 * q + t]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kR; ++j)
    *reinterpret_cast<float2*>(&red[warp][j][2 * lane]) = make_float2(acc[0][j], acc[1][j]);
  __syncthreads();
  for (int i = threadIdx.x; i < kR * kRedCols; i += 256) {
    const int j = i / kRedCols, c = i % kRedCols, kc = blockIdx.x * kRedCols + c;
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < 8; ++w) s += red[w][j][c];
    if (j < r && kc < K) part[(int64_t(blockIdx.y) * kR + j) * K + kc] = s;
  }
}

// G(j, k) = alpha · sum over splits in order (+ beta · G), G(j, k) at G[j * gj + k * gk]
__global__ void lora_reduce_sum_kernel(const float* part, int splits, int K, int r, float alpha, float beta,
                                       float* G, int64_t gj, int64_t gk) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t n = int64_t(r) * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    // consecutive threads along G's contiguous dimension
    const int64_t j = gk == 1 ? i / K : i % r, k = gk == 1 ? i % K : i / r;
    float s = 0.0f;
    for (int t = 0; t < splits; ++t) s += part[(int64_t(t) * kR + j) * K + k];
    float* o = G + j * gj + k * gk;
    *o = beta == 0.0f ? alpha * s : fmaf(beta, *o, alpha * s);
  }
}

unsigned sum_grid(int64_t n) {
  return unsigned(std::clamp<int64_t>(ceil_div(n, 256), 1, 4096));
}

}  // namespace

bool lora_gemm_fits(int64_t r, int64_t K, int64_t ldx, const float* X) {
  static const bool off = [] {  // NIBBLE_LORA_GEMM=cublas (benchmarks, A/B runs): cuBLAS for all of them
    const char* v = std::getenv("NIBBLE_LORA_GEMM");
    return v && std::strcmp(v, "cublas") == 0;
  }();
  return !off && r >= 1 && r <= kLoraRank && K % 4 == 0 && ldx % 4 == 0 && aligned(X, 16) && K < (int64_t(1) << 31);
}

size_t lora_down_workspace_bytes(int64_t M, int64_t K) {
  const DownSplit d = down_split(M, K);
  return size_t(d.splits * M * kR) * sizeof(float);
}

size_t lora_reduce_workspace_bytes(int64_t M, int64_t K) {
  const RedSplit d = red_split(M, K);
  return size_t(d.splits * kR * K) * sizeof(float);
}

void lora_down(const Launch& l, const float* X, int64_t ldx, int64_t M, int64_t K, const float* W, int64_t wj,
               int64_t wk, int64_t r, float alpha, float beta, float* out, int64_t ldo) {
  if (M == 0 || r == 0) return;
  if (!lora_gemm_fits(r, K, ldx, X) || (wj != 1 && wk != 1) || M >= (int64_t(1) << 31))
    throw InternalError("cuda::lora_down: a shape the kernel does not take");
  if (l.workspace_bytes < lora_down_workspace_bytes(M, K) || !l.workspace)
    throw InternalError("cuda::lora_down: workspace too small");
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
  const DownSplit d = down_split(M, K);
  float* part = static_cast<float*>(l.workspace);
  cuda::launch(lora_down_kernel, dim3(unsigned(d.row_blocks), unsigned(d.splits)), dim3(256), 0, s, X, ldx,
               int(M), int(K), W, wj, wk, int(r), int(d.cols), part);
  cuda::launch(lora_down_sum_kernel, dim3(sum_grid(M * r)), dim3(256), 0, s, static_cast<const float*>(part),
               int(d.splits), int(M), int(r), alpha, beta, out, ldo);
}

void lora_reduce(const Launch& l, const float* Y, int64_t ldy, const float* X, int64_t ldx, int64_t M,
                 int64_t K, int64_t r, float alpha, float beta, float* G, int64_t gj, int64_t gk) {
  if (K == 0 || r == 0) return;
  if (!lora_gemm_fits(r, K, ldx, X) || (gj != 1 && gk != 1) || M >= (int64_t(1) << 31))
    throw InternalError("cuda::lora_reduce: a shape the kernel does not take");
  if (M == 0) {  // an empty sum
    if (beta != 1.0f) throw InternalError("cuda::lora_reduce: M = 0 with beta != 1");
    return;
  }
  if (l.workspace_bytes < lora_reduce_workspace_bytes(M, K) || !l.workspace)
    throw InternalError("cuda::lora_reduce: workspace too small");
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
  const RedSplit d = red_split(M, K);
  float* part = static_cast<float*>(l.workspace);
  cuda::launch(lora_reduce_kernel, dim3(unsigned(d.col_blocks), unsigned(d.splits)), dim3(256), 0, s, Y, ldy,
               X, ldx, int(M), int(K), int(r), int(d.rows), part);
  cuda::launch(lora_reduce_sum_kernel, dim3(sum_grid(r * K)), dim3(256), 0, s,
               static_cast<const float*>(part), int(d.splits), int(K), int(r), alpha, beta, G, gj, gk);
}

}  // namespace nibble::cuda
