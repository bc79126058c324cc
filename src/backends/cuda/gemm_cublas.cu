// Prefill-shaped linear through cuBLAS (gemm_cublas.h). Workspace layout, each part 256-byte
// aligned: [W scratch: N x K compute dtype (4-bit only)] [x scratch: M x K compute dtype (16-bit
// compute only)]. out [M, N] f32 row-major = xs [M, K] . Ws[N, K]^T, which cuBLAS (column-major)
// computes as out^T [N, M] = op_T(Ws as K x N) . xs as K x M.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <span>
#include <type_traits>

#include "backends/cuda/act.cuh"
#include "backends/cuda/check.h"
#include "backends/cuda/compute_dtype.cuh"
#include "backends/cuda/cublas_util.h"
#include "backends/cuda/gemv_lut.h"
#include "backends/cuda/gemm_cublas.h"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/quant_device.cuh"
#include "nibble/error.h"

namespace nibble::cuda {

// One handle per (thread, device), created on first use; its stream is set per call.
cublasHandle_t cublas_handle(int device) {
  thread_local std::map<int, cublasHandle_t> handles;
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cublasHandle_t h = nullptr;
  NIBBLE_CUBLAS_CHECK(cublasCreate(&h));
  NIBBLE_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
  handles[device] = h;
  return h;
}

namespace {

using dev::load_bias;
using dev::pack2;
using dev::round_ct;

size_t align256(size_t n) {
  return (n + 255) / 256 * 256;
}

struct Q4 {
  const uint8_t* packed;
  const float* absmax;
  const uint8_t* absmax_q;
  const float* absmax2;
  const float* code2;
  const float* quant_map;
  float offset;
  int bs_log2;
  int64_t nested_bs;
};

// A 4-bit weight's dequantization parameters (bs_log2: the blocksize's exponent, rounded up).
Q4 q4_of(const Quant4Weight& w) {
  Q4 q{w.packed, w.absmax, w.absmax_q, w.absmax2, w.code2, w.quant_map, w.offset, 0, w.nested_blocksize};
  while ((int64_t(1) << q.bs_log2) < w.blocksize) ++q.bs_log2;
  return q;
}

// Group g of 8 elements (elements 8 g .. 8 g + 7) of the weight to group o of out: out =
// round(lut[code] * absmax) in CT (f32 CT: the f32 product), as dequantize_4bit computes it.
template <class CT>
__device__ __forceinline__ void dequant8(const Q4& q, const float* lut, int64_t g, int64_t o, void* out) {
  const uint32_t u = __ldg(reinterpret_cast<const uint32_t*>(q.packed) + g);
  const int64_t b = (g * 8) >> q.bs_log2;
  float am;
  if (q.absmax) {
    am = __ldg(q.absmax + b);
  } else {
    am = dev::mul_ftz(__ldg(q.code2 + __ldg(q.absmax_q + b)), __ldg(q.absmax2 + b / q.nested_bs)) + q.offset;
  }
  float v[8];
#pragma unroll
  for (int b8 = 0; b8 < 4; ++b8) {
    const uint32_t byte = (u >> (8 * b8)) & 0xffu;
    v[2 * b8] = dev::mul_ftz(lut[byte >> 4], am);
    v[2 * b8 + 1] = dev::mul_ftz(lut[byte & 15u], am);
  }
  if constexpr (std::is_same_v<CT, dev::F32>) {
    float4* w = reinterpret_cast<float4*>(out) + o * 2;
    w[0] = make_float4(v[0], v[1], v[2], v[3]);
    w[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    reinterpret_cast<uint4*>(out)[o] =
        make_uint4(pack2<CT>(v[0], v[1]), pack2<CT>(v[2], v[3]), pack2<CT>(v[4], v[5]), pack2<CT>(v[6], v[7]));
  }
}

// 8 codes (4 bytes) a thread and step, so a warp's loads (128 bytes) and stores (512 bytes of
// 16-bit values) are contiguous. (32 codes a thread, 64 bytes of stores 64 bytes apart across
// the warp, ran at ~50% of copy bandwidth: 10.5 ms of a 7B prefill-512 on an H100.)
// Groups c0 .. c0 + n8 - 1 of 8 elements (elements 8 c0 ..) to out from its start.
template <class CT>
__global__ void dequant4_kernel(Q4 q, int64_t c0, int64_t n8, void* out) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = q.quant_map[threadIdx.x];
  __syncthreads();
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < n8; c += int64_t(gridDim.x) * blockDim.x)
    dequant8<CT>(q, lut, c0 + c, c, out);
}

// Columns [8 k08, 8 (k08 + kt8)) of every row of a weight of K = 8 K8 columns, as a row-major
// [rows, 8 kt8] tile (n8 = rows * kt8 groups).
template <class CT>
__global__ void dequant4_cols_kernel(Q4 q, int64_t K8, int64_t k08, int64_t kt8, int64_t n8, void* out) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = q.quant_map[threadIdx.x];
  __syncthreads();
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < n8; c += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = c / kt8;
    dequant8<CT>(q, lut, n * K8 + k08 + (c - n * kt8), c, out);
  }
}

// xs = round(x) in CT, 2 values a thread.
template <class CT>
__global__ void round_x_kernel(const float* __restrict__ x, int64_t n2, uint32_t* __restrict__ xs) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n2;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float2 v = __ldg(reinterpret_cast<const float2*>(x) + i);
    xs[i] = pack2<CT>(v.x, v.y);
  }
}

// out[m, n] = round(out[m, n] + round(bias[n])).
template <class CT>
__global__ void epilogue_kernel(float* __restrict__ out, int64_t M, int64_t N, const void* bias, int bdt) {
  const int64_t total = M * N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = out[i];
    if (bias) v += round_ct<CT>(load_bias(bias, bdt, i % N));
    out[i] = round_ct<CT>(v);
  }
}

// out[m, n] = act(round(g[m, n] + round(bg[n]))) * round(u[m, n] + round(bu[n])): the two
// epilogues and the gated activation of the unfused path in one pass (g, u: raw GEMM results).
template <class CT>
__global__ void gated_epilogue_kernel(const float* __restrict__ g, const float* __restrict__ u, int64_t M,
                                      int64_t N, const void* bg, int bdg, const void* bu, int bdu, Act act,
                                      float* __restrict__ out) {
  const int64_t total = M * N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    float gv = g[i], uv = u[i];
    if (bg) gv += round_ct<CT>(load_bias(bg, bdg, i % N));
    if (bu) uv += round_ct<CT>(load_bias(bu, bdu, i % N));
    out[i] = dev::act_f(round_ct<CT>(gv), act) * round_ct<CT>(uv);
  }
}

// Blocks of a grid-stride loop: at most 4096 (the loops cover the rest).
unsigned grid4k(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

cudaDataType_t cuda_type(DType dt) {
  return dt == DType::BF16 ? CUDA_R_16BF : dt == DType::F16 ? CUDA_R_16F : CUDA_R_32F;
}

template <class F>
void with_ct(DType ct, F&& f) {
  if (ct == DType::BF16) return f(dev::BF16{});
  if (ct == DType::F16) return f(dev::F16{});
  return f(dev::F32{});
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

bool is_float_dt(DType dt) {
  return dt == DType::F32 || dt == DType::F16 || dt == DType::BF16;
}

// out = xs . Ws^T (f32 result), then the epilogue.
void gemm_and_finish(const Launch& l, const void* xs, const void* ws, DType ab_dt, int64_t M, int64_t K,
                     int64_t N, const void* bias, int bdt, DType ct, float* out, bool finish = true) {
  cublasHandle_t h = cublas_handle(l.device);
  NIBBLE_CUBLAS_CHECK(cublasSetStream(h, l.stream));
  const float alpha = 1.0f, beta = 0.0f;
  NIBBLE_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, ws,
                                   cuda_type(ab_dt), int(K), xs, cuda_type(ab_dt), int(K), &beta, out,
                                   CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (finish && (bias || ct != DType::F32))
    with_ct(ct, [&](auto c) {
      epilogue_kernel<decltype(c)><<<grid4k(M * N, 256), 256, 0, l.stream>>>(out, M, N, bias, bdt);
      NIBBLE_CUDA_CHECK_LAUNCH();
    });
}

// x rounded to ct into xs (16-bit ct); f32 ct uses x itself.
const void* rounded_x(const Launch& l, const float* x, int64_t M, int64_t K, DType ct, void* xs) {
  if (ct == DType::F32) return x;
  with_ct(ct, [&](auto c) {
    if constexpr (!std::is_same_v<decltype(c), dev::F32>) {
      round_x_kernel<decltype(c)>
          <<<grid4k(M * K / 2, 256), 256, 0, l.stream>>>(x, M * K / 2, static_cast<uint32_t*>(xs));
      NIBBLE_CUDA_CHECK_LAUNCH();
    }
  });
  return xs;
}

bool gemm_shape_ok(int64_t M, int64_t K, int64_t N) {
  return M > 16 && K % 32 == 0 && K <= (int64_t(1) << 30) && N <= (int64_t(1) << 30) &&
         M <= (int64_t(1) << 30);
}

}  // namespace

size_t gemm_4bit_workspace_bytes(int64_t M, int64_t K, int64_t N, DType ct) {
  if (!gemm_shape_ok(M, K, N) || !is_float_dt(ct)) return 0;
  const size_t e = size_t(dtype_nbytes(ct, 1));
  return align256(size_t(N * K) * e) + (ct == DType::F32 ? 0 : align256(size_t(M * K) * e));
}

size_t gemm_fp_workspace_bytes(int64_t M, int64_t K, int64_t N, DType wdt, DType round_to) {
  if (!gemm_shape_ok(M, K, N) || wdt != round_to || !is_float_dt(wdt)) return 0;
  return wdt == DType::F32 ? 0 : align256(size_t(M * K) * size_t(dtype_nbytes(wdt, 1)));
}

namespace {

// Whether the scratch path takes these weights of one K for x (workspace for the largest N).
bool gemm_4bit_takes(const Launch& l, const float* x, int64_t M, int64_t K, std::span<const Gemv4Target> ts,
                     DType ct) {
  if (ts.empty() || !aligned16(x) || !aligned16(l.workspace)) return false;
  int64_t n_max = 0;
  for (const Gemv4Target& t : ts) {
    if (t.w->blocksize < 32 || !aligned16(t.w->packed)) return false;
    n_max = std::max(n_max, t.N);
  }
  const size_t need = gemm_4bit_workspace_bytes(M, K, n_max, ct);
  return need != 0 && l.workspace_bytes >= need;
}

// The workspace's x scratch (after a W scratch for the largest N of ts).
void* x_scratch(const Launch& l, int64_t K, std::span<const Gemv4Target> ts, DType ct) {
  int64_t n_max = 0;
  for (const Gemv4Target& t : ts) n_max = std::max(n_max, t.N);
  return static_cast<char*>(l.workspace) + align256(size_t(n_max * K) * size_t(dtype_nbytes(ct, 1)));
}

// t's weight dequantized into the W scratch, then its GEMM with the rounded x xr (and the
// epilogue unless raw: out then holds the f32 sums).
void gemm_4bit_one(const Launch& l, const void* xr, int64_t M, int64_t K, const Gemv4Target& t, DType ct,
                   bool raw) {
  const Q4 q = q4_of(*t.w);
  const int64_t n8 = t.N * K / 8;
  with_ct(ct, [&](auto c) {
    dequant4_kernel<decltype(c)><<<grid4k(n8, 256), 256, 0, l.stream>>>(q, 0, n8, l.workspace);
    NIBBLE_CUDA_CHECK_LAUNCH();
  });
  gemm_and_finish(l, xr, l.workspace, ct, M, K, t.N, t.bias, t.bias_code, ct, t.out, !raw);
}

void gated_epilogue(const Launch& l, int64_t M, const Gemv4Target& gate, const Gemv4Target& up, Act act, DType ct,
                    float* out) {
  with_ct(ct, [&](auto c) {
    gated_epilogue_kernel<decltype(c)><<<grid4k(M * gate.N, 256), 256, 0, l.stream>>>(
        gate.out, up.out, M, gate.N, gate.bias, gate.bias_code, up.bias, up.bias_code, act, out);
    NIBBLE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

bool gemm_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
               const void* bias, int bias_code, DType ct, float* out) {
  const Gemv4Target t{&w, N, bias, bias_code, out};
  return gemm_4bit_group(l, x, M, K, std::span<const Gemv4Target>(&t, 1), ct);
}

bool gemm_4bit_group(const Launch& l, const float* x, int64_t M, int64_t K, std::span<const Gemv4Target> ts,
                     DType ct) {
  if (!gemm_4bit_takes(l, x, M, K, ts, ct)) return false;
  DeviceScope dev_guard(l.device);
  const void* xr = rounded_x(l, x, M, K, ct, x_scratch(l, K, ts, ct));
  for (const Gemv4Target& t : ts) gemm_4bit_one(l, xr, M, K, t, ct, false);
  return true;
}

bool gemm_4bit_gated(const Launch& l, const float* x, int64_t M, int64_t K, const Gemv4Target& gate,
                     const Gemv4Target& up, Act act, DType ct, float* out) {
  const Gemv4Target pair[] = {gate, up};
  if (gate.N != up.N || !gemm_4bit_takes(l, x, M, K, pair, ct)) return false;
  DeviceScope dev_guard(l.device);
  const void* xr = rounded_x(l, x, M, K, ct, x_scratch(l, K, pair, ct));
  gemm_4bit_one(l, xr, M, K, gate, ct, true);
  gemm_4bit_one(l, xr, M, K, up, ct, true);
  gated_epilogue(l, M, gate, up, act, ct, out);
  return true;
}

bool dequant4_takes(const Quant4Weight& w) {
  return w.blocksize >= 32 && (w.blocksize & (w.blocksize - 1)) == 0 && aligned16(w.packed);
}

bool dequant4_range(const Launch& l, const Quant4Weight& w, DType ct, int64_t e0, int64_t n, void* out) {
  if (e0 % 8 || n % 8 || !dequant4_takes(w) || !aligned16(out)) return false;
  const Q4 q = q4_of(w);
  if (n == 0) return true;
  with_ct(ct, [&](auto c) {
    dequant4_kernel<decltype(c)><<<grid4k(n / 8, 256), 256, 0, l.stream>>>(q, e0 / 8, n / 8, out);
    NIBBLE_CUDA_CHECK_LAUNCH();
  });
  return true;
}

bool dequant4_cols(const Launch& l, const Quant4Weight& w, DType ct, int64_t N, int64_t K, int64_t k0, int64_t kt,
                   void* out) {
  if (K % 8 || k0 % 8 || kt % 8 || !dequant4_takes(w) || !aligned16(out)) return false;
  const Q4 q = q4_of(w);
  if (N == 0 || kt == 0) return true;
  with_ct(ct, [&](auto c) {
    dequant4_cols_kernel<decltype(c)>
        <<<grid4k(N * kt / 8, 256), 256, 0, l.stream>>>(q, K / 8, k0 / 8, kt / 8, N * kt / 8, out);
    NIBBLE_CUDA_CHECK_LAUNCH();
  });
  return true;
}

bool gemm_fp(const Launch& l, const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
             const void* bias, int bias_code, DType round_to, float* out) {
  if (!gemm_shape_ok(M, K, N) || wdt != round_to || !is_float_dt(wdt) || !aligned16(x) || !aligned16(w))
    return false;
  const size_t need = gemm_fp_workspace_bytes(M, K, N, wdt, round_to);
  if (l.workspace_bytes < need || (need && !aligned16(l.workspace))) return false;
  const void* xr = rounded_x(l, x, M, K, wdt, l.workspace);
  gemm_and_finish(l, xr, w, wdt, M, K, N, bias, bias_code, wdt, out);
  return true;
}

}  // namespace nibble::cuda
