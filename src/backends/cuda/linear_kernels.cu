// CUDA linear ops (linear_cuda.h): one warp per output feature n, computing up to 16 rows of
// x against W's row n in registers, so W streams from memory once per 16 rows of x (once per
// call for decode, M <= 16). Weights are read in their stored form and decoded in registers:
//   fp W    8 (16-bit) or 4 (f32) elements per 16-byte load, used as stored (not rounded);
//   4-bit   32 codes per 16-byte load; 32 consecutive elements of a row that K % 32 == 0 keeps
//           inside one absmax block (blocksizes are multiples of 32), so the (nested) absmax is
//           decoded once per load. Other K: an element-wise path, correct when blocks of the
//           flattened [N, K] tensor straddle rows.
// Semantics as the CPU backend: x and the dequantized weight rounded to the compute dtype,
// f32 accumulation (fmaf: only the summation order differs), bias rounded, added, result
// rounded. This file is built with --fmad=false, so every fused multiply-add is explicit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "backends/cuda/check.h"
#include "backends/cuda/compute_dtype.cuh"
#include "backends/cuda/gemm_cublas.h"
#include "backends/cuda/gemv_lut.h"
#include "backends/cuda/gemv_mma.h"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/quant_device.cuh"
#include "nibble/error.h"

namespace nibble::cuda {
namespace {

constexpr int kWarps = 8;  // output features per block

// 4-bit weight as the kernel reads it.
struct Q4 {
  const uint8_t* packed;
  const float* absmax;  // plain, or nullptr when nested
  const uint8_t* absmax_q;
  const float* absmax2;
  const float* code2;
  const float* quant_map;
  float offset;
  int bs_log2;  // blocksize is a power of two (64..4096 in bitsandbytes, 32 too)
  int64_t blocksize;
  int64_t nested_bs;

  __device__ __forceinline__ float block_absmax(int64_t b) const {
    if (absmax) return __ldg(absmax + b);
    // dequantize_absmax: bitsandbytes' flushed product, then torch's plain add.
    float v = dev::mul_ftz(__ldg(code2 + __ldg(absmax_q + b)), __ldg(absmax2 + b / nested_bs));
    return v + offset;
  }
};

// acc[m] += w * round(x[m, k]) for the rows of this m-chunk.
template <int MT, class CT>
__device__ __forceinline__ void fma_rows(float (&acc)[MT], float w, const float* __restrict__ x, int64_t K,
                                         int rows, int64_t k) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
    if (m < rows) acc[m] = fmaf(w, dev::round_ct<CT>(__ldg(x + m * K + k)), acc[m]);
}

// Eight (or four, for f32) consecutive x values of each row, rounded, times the given weights.
template <int MT, class CT, int C>
__device__ __forceinline__ void fma_chunk(float (&acc)[MT], const float (&w)[C], const float* __restrict__ x,
                                          int64_t K, int rows, int64_t k) {
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= rows) continue;
    const float4* xp = reinterpret_cast<const float4*>(x + m * K + k);
#pragma unroll
    for (int j = 0; j < C / 4; ++j) {
      float4 v = __ldg(xp + j);
      acc[m] = fmaf(w[4 * j + 0], dev::round_ct<CT>(v.x), acc[m]);
      acc[m] = fmaf(w[4 * j + 1], dev::round_ct<CT>(v.y), acc[m]);
      acc[m] = fmaf(w[4 * j + 2], dev::round_ct<CT>(v.z), acc[m]);
      acc[m] = fmaf(w[4 * j + 3], dev::round_ct<CT>(v.w), acc[m]);
    }
  }
}

// Warp-reduces acc and writes out[m, n] = round(acc[m] + round(bias[n])).
// Bias element n of dtype bdt (0 f32, 1 f16, 2 bf16): a run-time choice, one branch per row.

template <int MT, class CT>
__device__ __forceinline__ void finish_rows(float (&acc)[MT], const void* bias, int bdt, int64_t n, int64_t N,
                                            int rows, float* out, int lane) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
  float b = bias ? dev::round_ct<CT>(dev::load_bias(bias, bdt, n)) : 0.0f;
#pragma unroll
  for (int m = 0; m < MT; ++m)
    if (m < rows && lane == m % 32) out[m * N + n] = dev::round_ct<CT>(bias ? acc[m] + b : acc[m]);
}

// ---- fp weights ------------------------------------------------------------------------------
template <int MT, class WT, class CT>
__global__ void __launch_bounds__(kWarps * 32)
    linear_fp_kernel(const float* __restrict__ x, int64_t M, int64_t K, const void* __restrict__ w, int64_t N,
                     const void* bias, int bdt, float* __restrict__ out, bool vec) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  constexpr int C = WT::kBytes == 4 ? 4 : 8;  // elements per 16-byte load
  for (int64_t m0 = 0; m0 < M; m0 += MT) {
    const int rows = M - m0 < MT ? int(M - m0) : MT;
    const float* xm = x + m0 * K;
    float acc[MT] = {};
    if (vec) {
      const uint4* row = reinterpret_cast<const uint4*>(static_cast<const char*>(w) + n * K * WT::kBytes);
      for (int64_t c = lane; c * C < K; c += 32) {
        uint4 raw = __ldg(row + c);
        float wv[C];
        if constexpr (WT::kBytes == 4) {
          wv[0] = __uint_as_float(raw.x), wv[1] = __uint_as_float(raw.y);
          wv[2] = __uint_as_float(raw.z), wv[3] = __uint_as_float(raw.w);
        } else {
          const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            float lo, hi;
            dev::unpack2<WT>(u[j], lo, hi);
            wv[2 * j] = lo, wv[2 * j + 1] = hi;
          }
        }
        fma_chunk<MT, CT, C>(acc, wv, xm, K, rows, c * C);
      }
    } else {
      for (int64_t k = lane; k < K; k += 32)
        fma_rows<MT, CT>(acc, dev::load1<WT>(w, n * K + k), xm, K, rows, k);
    }
    finish_rows<MT, CT>(acc, bias, bdt, n, N, rows, out + m0 * N, lane);
  }
}

// ---- 4-bit weights ---------------------------------------------------------------------------
template <int MT, class CT>
__global__ void __launch_bounds__(kWarps * 32)
    linear_4bit_kernel(const float* __restrict__ x, int64_t M, int64_t K, Q4 q, int64_t N, const void* bias,
                       int bdt, float* __restrict__ out, bool vec) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = q.quant_map[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  for (int64_t m0 = 0; m0 < M; m0 += MT) {
    const int rows = M - m0 < MT ? int(M - m0) : MT;
    const float* xm = x + m0 * K;
    float acc[MT] = {};
    if (vec) {  // K % 32 == 0: 32 codes of one block per 16-byte load
      const uint4* row = reinterpret_cast<const uint4*>(q.packed + n * K / 2);
      for (int64_t c = lane; c * 32 < K; c += 32) {
        const uint4 raw = __ldg(row + c);
        const float am = q.block_absmax((n * K + c * 32) >> q.bs_log2);
        const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float wv[8];
#pragma unroll
          for (int b = 0; b < 4; ++b) {  // byte b of the word: element 2b high nibble, 2b+1 low
            const uint32_t byte = (u[j] >> (8 * b)) & 0xffu;
            wv[2 * b] = dev::round_ct<CT>(dev::mul_ftz(lut[byte >> 4], am));
            wv[2 * b + 1] = dev::round_ct<CT>(dev::mul_ftz(lut[byte & 0xfu], am));
          }
          fma_chunk<MT, CT, 8>(acc, wv, xm, K, rows, c * 32 + 8 * j);
        }
      }
    } else {  // any K: element by element over the flattened tensor
      for (int64_t k = lane; k < K; k += 32) {
        const int64_t e = n * K + k;
        const uint32_t byte = __ldg(q.packed + e / 2);
        const uint32_t code = (e & 1) ? byte & 0xfu : byte >> 4;
        const float wv = dev::round_ct<CT>(dev::mul_ftz(lut[code], q.block_absmax(e / q.blocksize)));
        fma_rows<MT, CT>(acc, wv, xm, K, rows, k);
      }
    }
    finish_rows<MT, CT>(acc, bias, bdt, n, N, rows, out + m0 * N, lane);
  }
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <class F>
void with_dtype(const char* op, DType dt, F&& f) {
  switch (dt) {
    case DType::F32:
      return f(dev::F32{});
    case DType::F16:
      return f(dev::F16{});
    case DType::BF16:
      return f(dev::BF16{});
    default:
      throw UnsupportedError(detail::str(op, ": no CUDA kernel for dtype ", dtype_name(dt)));
  }
}

// Calls f(std::integral_constant<int, MT>) with the rows per pass for M.
template <class F>
void with_rows(int64_t M, F&& f) {
  if (M <= 1) return f(std::integral_constant<int, 1>{});
  if (M <= 4) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, 16>{});
}

// The bias dtype as the kernels' run-time code.

void check_shape(const char* op, int64_t M, int64_t K, int64_t N) {
  if (M < 0 || K <= 0 || N <= 0) throw ShapeError(detail::str(op, ": bad shape M=", M, " K=", K, " N=", N));
}

}  // namespace

size_t linear_workspace_bytes(int64_t M, int64_t K, int64_t N, DType wdt, DType round_to) {
  return gemm_fp_workspace_bytes(M, K, N, wdt, round_to);
}

void linear(const Launch& l, const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
            const void* bias, DType bias_dt, DType round_to, float* out) {
  check_shape("linear", M, K, N);
  if (M == 0) return;
  DeviceScope dev_guard(l.device);
  const int64_t C = wdt == DType::F32 ? 4 : 8;
  const bool vec = K % C == 0 && aligned16(w) && aligned16(x);
  const int bdt = bias_dtype_code("linear", bias, bias_dt);
  if (gemv_mma_fp_ok(M, K, w, wdt, round_to, x))
    return gemv_mma_fp(l, x, M, K, w, wdt, N, bias, bdt, round_to, out);
  if (gemm_fp(l, x, M, K, w, wdt, N, bias, bdt, round_to, out)) return;
  const dim3 grid(unsigned((N + kWarps - 1) / kWarps));
  with_dtype("linear", wdt, [&](auto wt) {
    with_dtype("linear", round_to, [&](auto ct) {
      with_rows(M, [&](auto mt) {
        linear_fp_kernel<decltype(mt)::value, decltype(wt), decltype(ct)>
            <<<grid, kWarps * 32, 0, l.stream>>>(x, M, K, w, N, bias, bdt, out, vec);
        NIBBLE_CUDA_CHECK_LAUNCH();
      });
    });
  });
}

size_t linear_4bit_workspace_bytes(int64_t M, int64_t K, int64_t N, DType compute_dtype) {
  return gemm_4bit_workspace_bytes(M, K, N, compute_dtype);
}

int bias_dtype_code(const char* op, const void* bias, DType dt) {
  if (!bias || dt == DType::F32) return 0;
  if (dt == DType::F16) return 1;
  if (dt == DType::BF16) return 2;
  throw UnsupportedError(detail::str(op, ": bias dtype ", dtype_name(dt), " is not f32/f16/bf16"));
}

void linear_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
                 const void* bias, DType bias_dt, DType compute_dtype, float* out) {
  check_shape("linear_4bit", M, K, N);
  if (w.quant_type != DType::NF4 && w.quant_type != DType::FP4)
    throw UnsupportedError(
        detail::str("linear_4bit: quant_type ", dtype_name(w.quant_type), " is not 4-bit"));
  if (w.blocksize <= 0 || (w.blocksize & (w.blocksize - 1)) != 0)
    throw ShapeError(detail::str("linear_4bit: blocksize ", w.blocksize, " is not a power of two"));
  if (!w.packed || !w.quant_map || (!w.absmax && (!w.absmax_q || !w.absmax2 || !w.code2)))
    throw Error("linear_4bit: missing packed weight, quant_map or absmax state");
  if (M == 0) return;
  DeviceScope dev_guard(l.device);
  Q4 q{w.packed,    w.absmax, w.absmax_q, w.absmax2,   w.code2,
       w.quant_map, w.offset, 0,          w.blocksize, w.nested_blocksize};
  while ((int64_t(1) << q.bs_log2) < w.blocksize) ++q.bs_log2;
  const bool vec = K % 32 == 0 && w.blocksize % 32 == 0 && aligned16(w.packed) && aligned16(x);
  const int bdt = bias_dtype_code("linear_4bit", bias, bias_dt);
  if (gemv_lut_4bit_ok(M, K, w, compute_dtype, x))
    return gemv_lut_4bit(l, x, M, K, w, N, bias, bdt, compute_dtype, out);
  if (gemv_mma_4bit_ok(M, K, w, compute_dtype, x))
    return gemv_mma_4bit(l, x, M, K, w, N, bias, bdt, compute_dtype, out);
  if (gemm_4bit(l, x, M, K, w, N, bias, bdt, compute_dtype, out)) return;
  const dim3 grid(unsigned((N + kWarps - 1) / kWarps));
  with_dtype("linear_4bit", compute_dtype, [&](auto ct) {
    with_rows(M, [&](auto mt) {
      linear_4bit_kernel<decltype(mt)::value, decltype(ct)>
          <<<grid, kWarps * 32, 0, l.stream>>>(x, M, K, q, N, bias, bdt, out, vec);
      NIBBLE_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace nibble::cuda
