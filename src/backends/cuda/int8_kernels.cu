// LLM.int8 on CUDA (linear_cuda.h: linear_int8), the CPU backend's linear_int8 step by step
// (bitsandbytes MatMul8bitLt inference, built there with fast math):
//   1. per row m: A.to(f16); absmax over |a| < threshold (all values when threshold == 0);
//      columns with any |a| >= threshold are outliers; CA = rn(a * (127 * rcp.approx(absmax)))
//      with the row's outliers zeroed                                       (rowquant_kernel)
//   2. the outlier columns listed in column order; with M > 1 they are zeroed in every row
//                                                                          (outliers_kernel)
//   3. per output (m, n): the exact int32 dot CA[m] . CB[n] (dp4a), dequantized as
//      kdequant_mm_int32_fp16 (ftz products, f16 rounding, the f16 bias fused into the fma,
//      another bias added after it), rounded to the activation dtype, plus the outliers in the
//      activation dtype: sum_c round(A[m, c]) * round(CB[n, c] * SCB[n] / 127), one rounding
//                                                                          (gemv_kernel)
// Workspace: CA [M, K] i8 | SCA [M] f32 | flags [K] i32 | outlier list [K] i32 | count i32.
// This file is built with --fmad=false: every fused multiply-add is explicit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backends/cuda/check.h"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/quant_device.cuh"
#include "nibble/error.h"

namespace nibble::cuda {
namespace {

size_t align256(size_t n) {
  return (n + 255) / 256 * 256;
}

struct Ws {
  int8_t* ca;
  float* sca;
  int* flags;
  int* list;
  int* count;
};

Ws carve(void* base, int64_t M, int64_t K) {
  char* p = static_cast<char*>(base);
  Ws w;
  w.ca = reinterpret_cast<int8_t*>(p);
  p += align256(size_t(M * K));
  w.sca = reinterpret_cast<float*>(p);
  p += align256(size_t(M) * 4);
  w.flags = reinterpret_cast<int*>(p);
  p += align256(size_t(K) * 4);
  w.list = reinterpret_cast<int*>(p);
  p += align256(size_t(K) * 4);
  w.count = reinterpret_cast<int*>(p);
  return w;
}

__device__ __forceinline__ float f16_round(float v) {
  return __half2float(__float2half_rn(v));
}

// act: 0 f32, 1 f16, 2 bf16
__device__ __forceinline__ float act_round(float v, int act) {
  if (act == 1) return __half2float(__float2half_rn(v));
  if (act == 2) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}

__device__ __forceinline__ float fma_ftz(float a, float b, float c) {
  float r;
  asm("fma.rn.ftz.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
  return r;
}

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    rowquant_kernel(const float* __restrict__ x, int64_t K, float thr, Ws w) {
  __shared__ float red[kThreads / 32];
  const int64_t m = blockIdx.x;
  const float* row = x + m * K;
  const bool sparse = thr > 0.0f;
  float mx = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += kThreads) {
    const float v = fabsf(f16_round(row[c]));
    if (sparse && v >= thr) {
      w.flags[c] = 1;
      continue;
    }
    mx = fmaxf(mx, v);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = mx;
  __syncthreads();
  mx = red[0];
  for (int i = 1; i < kThreads / 32; ++i) mx = fmaxf(mx, red[i]);
  if (threadIdx.x == 0) w.sca[m] = mx;
  const float scale = dev::mul_ftz(127.0f, dev::rcp_approx_ftz(mx));
  for (int64_t c = threadIdx.x; c < K; c += kThreads) {
    const float v = f16_round(row[c]);
    int8_t q = 0;
    if (!(sparse && fabsf(v) >= thr)) {
      const float s = dev::mul_ftz(v, scale);
      q = isnan(s) ? int8_t(0) : int8_t(__float2int_rn(s));
    }
    w.ca[m * K + c] = q;
  }
}

// One block: the flagged columns in column order (each thread counts a contiguous segment, a
// serial scan of the counts gives each its start), then those columns zeroed in every row.
__global__ void __launch_bounds__(1024) outliers_kernel(int64_t M, int64_t K, Ws w) {
  __shared__ int cnt[1024];
  const int t = threadIdx.x;
  const int64_t seg = (K + 1023) / 1024, c0 = t * seg, c1 = min(K, c0 + seg);
  int n = 0;
  for (int64_t c = c0; c < c1; ++c) n += w.flags[c] != 0;
  cnt[t] = n;
  __syncthreads();
  if (t == 0) {
    int run = 0;
    for (int i = 0; i < 1024; ++i) {
      const int v = cnt[i];
      cnt[i] = run;
      run += v;
    }
    *w.count = run;
  }
  __syncthreads();
  int at = cnt[t];
  for (int64_t c = c0; c < c1; ++c)
    if (w.flags[c]) w.list[at++] = int(c);
  __syncthreads();
  const int total = *w.count;
  if (M > 1)
    for (int64_t i = t; i < M * total; i += 1024) w.ca[(i / total) * K + w.list[i % total]] = 0;
}

__device__ __forceinline__ float load_bias(const void* bias, int bdt, int64_t n) {
  if (bdt == 1) return dev::load1<dev::F16>(bias, n);
  if (bdt == 2) return dev::load1<dev::BF16>(bias, n);
  return dev::load1<dev::F32>(bias, n);
}

constexpr int kWarps = 8;  // output features per block
constexpr int kRows = 8;   // x rows per pass

// One warp per output feature n: int32 dots of kRows rows of CA at a time (dp4a over 16-byte
// chunks when K % 16 == 0), then each lane finishes one (m, n).
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const float* __restrict__ x, int64_t M, int64_t K, const int8_t* __restrict__ cb,
                const float* __restrict__ scb, int64_t N, const void* bias, int bdt, int act, Ws w, bool vec,
                float* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int8_t* wrow = cb + n * K;
  const int n_out = *w.count;
  const float sb = scb[n];
  const bool fused = bias && act == 1;
  const float bv = bias ? act_round(load_bias(bias, bdt, n), act) : 0.0f;
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int rows = M - m0 < kRows ? int(M - m0) : kRows;
    int acc[kRows] = {};
    if (vec) {
      for (int64_t c = lane; c * 16 < K; c += 32) {
        const int4 wv = __ldg(reinterpret_cast<const int4*>(wrow) + c);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r >= rows) break;
          const int4 av = *reinterpret_cast<const int4*>(w.ca + (m0 + r) * K + c * 16);
          acc[r] = __dp4a(av.x, wv.x, acc[r]);
          acc[r] = __dp4a(av.y, wv.y, acc[r]);
          acc[r] = __dp4a(av.z, wv.z, acc[r]);
          acc[r] = __dp4a(av.w, wv.w, acc[r]);
        }
      }
    } else {
      for (int64_t k = lane; k < K; k += 32) {
        const int wk = wrow[k];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (r < rows) acc[r] += int(w.ca[(m0 + r) * K + k]) * wk;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
    if (lane >= rows) continue;
    int mine = 0;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (r == lane) mine = acc[r];
    const int64_t m = m0 + lane;
    const float p = dev::mul_ftz(dev::mul_ftz(float(mine), w.sca[m]), sb);
    float v = f16_round(fma_ftz(p, 6.200012e-05f, fused ? bv : 0.0f));
    if (bias && !fused) v = f16_round(v + bv);
    v = act_round(v, act);
    if (n_out > 0) {
      float s = 0.0f;
      for (int c = 0; c < n_out; ++c) {
        const int col = w.list[c];
        const float sub_b = act_round(float(wrow[col]) * sb * 7.874015718698502e-3f, act);
        s = s + act_round(x[m * K + col], act) * sub_b;
      }
      v = act_round(v + s, act);
    }
    out[m * N + n] = v;
  }
}

int act_code(DType dt) {
  if (dt == DType::F32) return 0;
  if (dt == DType::F16) return 1;
  if (dt == DType::BF16) return 2;
  throw UnsupportedError(
      detail::str("linear_int8: activation dtype ", dtype_name(dt), " is not f32/f16/bf16"));
}

}  // namespace

size_t linear_int8_workspace_bytes(int64_t M, int64_t K, int64_t) {
  return align256(size_t(M * K)) + align256(size_t(M) * 4) + 2 * align256(size_t(K) * 4) + 256;
}

void linear_int8(const Launch& l, const float* x, int64_t M, int64_t K, const int8_t* cb, const float* scb,
                 int64_t N, const void* bias, DType bias_dt, float threshold, DType act_dtype, float* out) {
  if (M < 0 || K <= 0 || N <= 0)
    throw ShapeError(detail::str("linear_int8: bad shape M=", M, " K=", K, " N=", N));
  if (M == 0) return;
  if (!l.workspace || l.workspace_bytes < linear_int8_workspace_bytes(M, K, N))
    throw Error(detail::str("linear_int8: the workspace holds ", l.workspace_bytes, " bytes, ",
                            linear_int8_workspace_bytes(M, K, N), " are needed"));
  const int act = act_code(act_dtype), bdt = bias_dtype_code("linear_int8", bias, bias_dt);
  int prev = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(l.device));
  Ws w = carve(l.workspace, M, K);
  NIBBLE_CUDA_CHECK(cudaMemsetAsync(w.flags, 0, size_t(K) * 4, l.stream));
  NIBBLE_CUDA_CHECK(cudaMemsetAsync(w.count, 0, 4, l.stream));
  rowquant_kernel<<<unsigned(M), kThreads, 0, l.stream>>>(x, K, threshold, w);
  NIBBLE_CUDA_CHECK_LAUNCH();
  if (threshold > 0.0f) {
    outliers_kernel<<<1, 1024, 0, l.stream>>>(M, K, w);
    NIBBLE_CUDA_CHECK_LAUNCH();
  }
  const bool vec = K % 16 == 0 && reinterpret_cast<uintptr_t>(cb) % 16 == 0;
  gemv_kernel<<<unsigned((N + kWarps - 1) / kWarps), kWarps * 32, 0, l.stream>>>(x, M, K, cb, scb, N, bias,
                                                                                 bdt, act, w, vec, out);
  NIBBLE_CUDA_CHECK_LAUNCH();
  if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(prev));
}

}  // namespace nibble::cuda
