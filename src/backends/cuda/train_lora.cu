// dX through the frozen base weight of a LoRA-adapted Linear (train_cuda.h): rows of W as the
// forward uses them are written as an f32 tile [nt, K] into the workspace (fp converted, 4-bit
// dequantized and rounded to the compute dtype as bitsandbytes' dequantize_4bit to it, int8 as
// CB * SCB / 127), then dx += dy[:, tile] · tile through cuBLAS. The tile is the host reference's
// (nn::linear_backward_dx): about 1 MiB, so no whole dequantized copy of W exists.
#include <cuda_runtime.h>

#include "backends/cuda/compute_dtype.cuh"
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

// A code of the packed weight (first value of a byte in the high nibble) times its block's absmax
// (plain, or nested as dequantize_absmax: code2[q] * absmax2[b / nested] + offset).
template <class CT>
__global__ void quant4_tile_kernel(Quant4Weight q, int64_t e0, int64_t n, float* tile) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  NIBBLE_TILE_LOOP(i, n) {
    const int64_t e = e0 + i, b = e / q.blocksize;
    const uint8_t byte = q.packed[e / 2];
    const int code = (e % 2 == 0) ? byte >> 4 : byte & 15;
    const float am = q.absmax
                         ? q.absmax[b]
                         : dev::mul_ftz(q.code2[q.absmax_q[b]], q.absmax2[b / q.nested_blocksize]) + q.offset;
    tile[i] = dev::round_ct<CT>(q.quant_map[code] * am);
  }
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

size_t linear_backward_dx_workspace_bytes(int64_t N, int64_t K) {
  return size_t(base_tile_rows(N, K) * K) * sizeof(float);
}

void linear_backward_dx(const Launch& l, const BaseWeight& w, const float* dy, int64_t M, float* dx) {
  if (M == 0 || w.N == 0 || w.K == 0) return;
  const int64_t tile_rows = base_tile_rows(w.N, w.K);
  if (l.workspace_bytes < linear_backward_dx_workspace_bytes(w.N, w.K))
    throw InternalError("cuda::linear_backward_dx: workspace too small");
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
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
