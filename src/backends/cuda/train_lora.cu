// dX through the frozen base weight of a LoRA-adapted Linear (train_cuda.h): rows of W as the
// forward uses them are written as an f32 tile [nt, K] into the workspace (fp converted, 4-bit
// dequantized and rounded to the compute dtype as bitsandbytes' dequantize_4bit to it, int8 as
// CB * SCB / 127), then dx += dy[:, tile] · tile through cuBLAS. The tile is the host reference's
// (nn::linear_backward_dx): about 1 MiB, so no whole dequantized copy of W exists.
// A 4-bit weight with bf16 compute takes the tensor cores instead, as bitsandbytes' backward does
// under bf16 autocast (grad_input = grad_output @ dequantize_4bit(W).t() with grad_output in bf16):
// its tile is exact in bf16, dy is rounded to bf16 once, and one bf16 GEMM a tile sums in f32;
// tiles of up to 32 MiB keep each GEMM's inner dimension large (row tiles, or column tiles of a
// weight no taller than wide, which then sum over all of N).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backends/cuda/check.h"
#include "backends/cuda/compute_dtype.cuh"
#include "backends/cuda/cublas_util.h"
#include "backends/cuda/gemm_cublas.h"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/quant_device.cuh"
#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {
namespace {

#define NIBBLE_TILE_LOOP(i, n)                                              \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// Elements [e0, e0 + n) of W into tile.
template <class W>
__global__ void fp_tile_kernel(const void* w, int64_t e0, int64_t n, float* tile) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_TILE_LOOP(i, n) tile[i] = dev::load1<W>(w, e0 + i);
}

// Element e of the weight: its code (first value of a byte in the high nibble) times its block's
// absmax (plain, or nested as dequantize_absmax: code2[q] * absmax2[b / nested] + offset),
// rounded to the compute dtype.
template <class CT>
__device__ __forceinline__ float quant4_value(const Quant4Weight& q, int64_t e) {
  const int64_t b = e / q.blocksize;
  const uint8_t byte = q.packed[e / 2];
  const int code = (e % 2 == 0) ? byte >> 4 : byte & 15;
  const float am = q.absmax
                       ? q.absmax[b]
                       : dev::mul_ftz(q.code2[q.absmax_q[b]], q.absmax2[b / q.nested_blocksize]) + q.offset;
  return dev::round_ct<CT>(q.quant_map[code] * am);
}

template <class CT>
__global__ void quant4_tile_kernel(Quant4Weight q, int64_t e0, int64_t n, float* tile) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_TILE_LOOP(i, n) tile[i] = quant4_value<CT>(q, e0 + i);
}

// The same values as quant4_tile_kernel<BF16>, stored as bf16 (exact: they are bf16-rounded).
__global__ void quant4_tile_bf16_kernel(Quant4Weight q, int64_t e0, int64_t n, __nv_bfloat16* tile) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_TILE_LOOP(i, n) tile[i] = __float2bfloat16_rn(quant4_value<dev::BF16>(q, e0 + i));
}

__global__ void int8_tile_kernel(const int8_t* cb, const float* scb, int64_t K, int64_t e0, int64_t n,
                                 float* tile) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_TILE_LOOP(i, n) {
    const int64_t e = e0 + i;
    tile[i] = float(cb[e]) * scb[e / K] / 127.0f;
  }
}

#undef NIBBLE_TILE_LOOP

}  // namespace

int64_t base_tile_rows(int64_t N, int64_t K) {
  return std::min(std::max<int64_t>(32, (int64_t(1) << 18) / std::max<int64_t>(K, 1) / 32 * 32), N);
}

namespace {

bool tensor_core_dx(const BaseWeight& w) {
  return w.kind == BaseWeight::Kind::Quant4 && w.compute_dtype == DType::BF16;
}

// Tiles of up to 16M bf16 values (32 MiB): one tile for every Llama-3.2-1B projection and for
// Llama-2-7B's attention ones, three for its MLP's; fewer tiles mean fewer passes of dx's f32
// accumulation and a longer inner dimension per GEMM.
constexpr int64_t kTileValues = int64_t(1) << 24;
// Rows (or columns) of `full` a tile holds when each is `width` values long: a multiple of 64.
int64_t tile_span(int64_t width, int64_t full) {
  return std::min(std::max<int64_t>(64, kTileValues / std::max<int64_t>(width, 1) / 64 * 64), full);
}
int64_t tc_tile_rows(int64_t N, int64_t K) {
  return tile_span(K, N);
}
// A weight no taller than wide that takes several tiles (Llama-2-7B's down projection, 4096 x
// 11008) is tiled by columns instead: each tile [N, kt] holds whole columns of W, so its GEMM
// sums over all N at once and writes its columns of dx once (row tiles of such a weight are
// short GEMMs, each reading and writing all of dx in f32). Columns a tile, a multiple of 64.
// NIBBLE_DX_TILES=rows (benchmarks, A/B runs) keeps every weight in row tiles.
int64_t tc_tile_cols(int64_t N, int64_t K) {
  static const bool rows_only = [] {
    const char* v = std::getenv("NIBBLE_DX_TILES");
    return v && std::strcmp(v, "rows") == 0;
  }();
  if (rows_only || N > K || N * K <= kTileValues || K % 8) return 0;
  return tile_span(N, K);
}

size_t align256(size_t b) {
  return (b + 255) / 256 * 256;
}

}  // namespace

size_t linear_backward_dx_workspace_bytes(const BaseWeight& w, int64_t M) {
  if (tensor_core_dx(w))
    return align256(size_t(M * w.N) * 2) +
           size_t(std::max(tc_tile_rows(w.N, w.K) * w.K, tc_tile_cols(w.N, w.K) * w.N)) * 2;
  return size_t(base_tile_rows(w.N, w.K) * w.K) * sizeof(float);
}

void linear_backward_dx(const Launch& l, const BaseWeight& w, const float* dy, int64_t M, float* dx) {
  if (M == 0 || w.N == 0 || w.K == 0) return;
  if (l.workspace_bytes < linear_backward_dx_workspace_bytes(w, M))
    throw InternalError("cuda::linear_backward_dx: workspace too small");
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
  if (tensor_core_dx(w)) {
    __nv_bfloat16* dy16 = static_cast<__nv_bfloat16*>(l.workspace);  // [M][N]
    __nv_bfloat16* tile =
        reinterpret_cast<__nv_bfloat16*>(static_cast<char*>(l.workspace) + align256(size_t(M * w.N) * 2));
    copy_rows(l, dy, w.N, M, w.N, dy16, DType::BF16, w.N);  // grad_output in the compute dtype
    cublasHandle_t h = cublas_handle(l.device);
    NIBBLE_CUBLAS_CHECK(cublasSetStream(h, s));
    const float one = 1.0f;
    const int64_t tile_cols = tc_tile_cols(w.N, w.K);
    if (tile_cols > 0 && dequant4_takes(w.q4)) {
      for (int64_t k0 = 0; k0 < w.K; k0 += tile_cols) {
        const int64_t kt = std::min(tile_cols, w.K - k0);
        if (!dequant4_cols(l, w.q4, DType::BF16, w.N, w.K, k0, kt, tile))
          throw InternalError("cuda::linear_backward_dx: a column tile dequant4_cols does not take");
        // dx[:, k0:k0+kt] [M, kt] (row stride K) += dy16 [M, N] · tile [N, kt]
        NIBBLE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, int(kt), int(M), int(w.N), &one, tile,
                                         CUDA_R_16BF, int(kt), dy16, CUDA_R_16BF, int(w.N), &one, dx + k0,
                                         CUDA_R_32F, int(w.K), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
      return;
    }
    const int64_t tile_rows = tc_tile_rows(w.N, w.K);
    for (int64_t n0 = 0; n0 < w.N; n0 += tile_rows) {
      const int64_t nt = std::min(tile_rows, w.N - n0), n = nt * w.K;
      // the forward's dequantization kernel (gemm_4bit's scratch values) where it takes the range
      if (!dequant4_range(l, w.q4, DType::BF16, n0 * w.K, n, tile))
        cuda::launch(quant4_tile_bf16_kernel, dim3(grid_for(n)), dim3(256), 0, s, w.q4, n0 * w.K, n, tile);
      // dx [M, K] += dy16[:, n0:n0+nt] [M, nt] (row stride N) · tile [nt, K] (row-major, so
      // column-major dx^T = tile^T · dy16^T)
      NIBBLE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, int(w.K), int(M), int(nt), &one, tile,
                                       CUDA_R_16BF, int(w.K), dy16 + n0, CUDA_R_16BF, int(w.N), &one, dx,
                                       CUDA_R_32F, int(w.K), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return;
  }
  const int64_t tile_rows = base_tile_rows(w.N, w.K);
  float* tile = static_cast<float*>(l.workspace);
  for (int64_t n0 = 0; n0 < w.N; n0 += tile_rows) {
    const int64_t nt = std::min(tile_rows, w.N - n0), e0 = n0 * w.K, n = nt * w.K;
    const dim3 grid(grid_for(n)), block(256);
    switch (w.kind) {
      case BaseWeight::Kind::Fp:
        with_float_dtype("cuda::linear_backward_dx", w.wdt, [&](auto W) {
          cuda::launch(fp_tile_kernel<decltype(W)>, grid, block, 0, s, w.w, e0, n, tile);
        });
        break;
      case BaseWeight::Kind::Quant4:
        with_float_dtype("cuda::linear_backward_dx", w.compute_dtype, [&](auto CT) {
          cuda::launch(quant4_tile_kernel<decltype(CT)>, grid, block, 0, s, w.q4, e0, n, tile);
        });
        break;
      case BaseWeight::Kind::Int8:
        cuda::launch(int8_tile_kernel, grid, block, 0, s, w.cb, w.scb, w.K, e0, n, tile);
        break;
    }
    // dx [M, K] += dy[:, n0:n0+nt] [M, nt] (row stride N) · tile [nt, K]
    gemm_f32(l, false, false, M, w.K, nt, 1.0f, dy + n0, w.N, tile, w.K, 1.0f, dx, w.K);
  }
}

}  // namespace nibble::cuda
