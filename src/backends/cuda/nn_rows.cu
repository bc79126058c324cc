// CUDA kernels of the row-wise, elementwise and data-movement forward ops (nn_cuda.h): one
// block per row for the reductions, grid-stride loops for the elementwise ops; f32 math as
// the CPU backend (backends/cpu/nn_cpu.cpp) does it.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>

#include "backends/cuda/act.cuh"
#include "backends/cuda/check.h"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/nn_cuda.h"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/quant_device.cuh"

namespace nibble::cuda {
namespace {

constexpr int kRowThreads = 256;

using dev::block_max;
using dev::block_sum;

// kAdd: x += r first (the residual add fused in front of the norm; the same f32 sums as add
// then rms_norm, since each thread reads back only the elements it wrote).
// Rows of at most kNormThreads * kNormPer elements (every decoder's hidden size up to 8192) stay
// in registers: the weight is loaded before the wait on the previous kernel and every load of
// x and r is issued at once, so a row costs one memory round trip (the loop below it, one per
// element a thread: a decode step's norms were 16 us each on an H100, most of it waiting).
constexpr int kNormThreads = 1024;
constexpr int kNormPer = 8;

// Threads for a row of C: about four elements a thread, whole warps, at most kNormThreads.
unsigned norm_threads(int64_t C) {
  return unsigned(std::clamp<int64_t>((ceil_div(C, 4) + 31) / 32 * 32, 32, kNormThreads));
}

template <class W, bool kAdd>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(float* x, const float* __restrict__ r, int64_t C, const void* __restrict__ w, float eps,
                    float unit, float* out) {
  dev::pdl_launch_dependents();
  __shared__ float red[32];
  float* xr = x + blockIdx.x * C;
  float* o = out + blockIdx.x * C;
  const int tid = threadIdx.x, nt = blockDim.x;
  if (C <= int64_t(kNormPer) * nt) {
    float v[kNormPer], wv[kNormPer];
#pragma unroll
    for (int i = 0; i < kNormPer; ++i) {
      const int64_t c = tid + int64_t(i) * nt;
      wv[i] = c < C ? dev::load1<W>(w, c) + unit : 0.0f;
    }
    dev::pdl_wait();
#pragma unroll
    for (int i = 0; i < kNormPer; ++i) {
      const int64_t c = tid + int64_t(i) * nt;
      v[i] = c < C ? xr[c] : 0.0f;
      if constexpr (kAdd) v[i] += c < C ? r[blockIdx.x * C + c] : 0.0f;
    }
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < kNormPer; ++i) {
      const int64_t c = tid + int64_t(i) * nt;
      if (c < C) {
        if constexpr (kAdd) xr[c] = v[i];
        ss += v[i] * v[i];
      }
    }
    ss = block_sum(ss, red);
    const float inv = rsqrtf(ss / float(C) + eps);
#pragma unroll
    for (int i = 0; i < kNormPer; ++i) {
      const int64_t c = tid + int64_t(i) * nt;
      if (c < C) o[c] = wv[i] * (v[i] * inv);
    }
    return;
  }
  dev::pdl_wait();
  float ss = 0.0f;
  if constexpr (kAdd) {
    const float* rr = r + blockIdx.x * C;
    for (int64_t c = tid; c < C; c += nt) {
      const float v = xr[c] + rr[c];
      xr[c] = v;
      ss += v * v;
    }
  } else {
    for (int64_t c = tid; c < C; c += nt) ss += xr[c] * xr[c];
  }
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / float(C) + eps);
  for (int64_t c = tid; c < C; c += nt) o[c] = (dev::load1<W>(w, c) + unit) * (xr[c] * inv);
}

template <class W, class B>
__global__ void layer_norm_kernel(const float* __restrict__ x, int64_t C, const void* __restrict__ w,
                                  const void* __restrict__ b, float eps, float* out) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * C;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
  const float mean = block_sum(s, red) / float(C);
  float v = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += (xr[c] - mean) * (xr[c] - mean);
  const float rstd = rsqrtf(block_sum(v, red) / float(C) + eps);
  float* o = out + blockIdx.x * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    o[c] = (xr[c] - mean) * rstd * dev::load1<W>(w, c) + (b ? dev::load1<B>(b, c) : 0.0f);
}

__global__ void activate_kernel(float* x, int64_t n, Act a) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = dev::act_f(x[i], a);
}

__global__ void gated_kernel(const float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t F, Act a,
                             float* out) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t r = blockIdx.y;
  for (int64_t f = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; f < F;
       f += int64_t(gridDim.x) * blockDim.x)
    out[r * F + f] = dev::act_f(gate[r * ldg + f], a) * up[r * ldu + f];
}

// Four columns a thread (16-byte loads and stores) where the rows allow it: the same values.
__global__ void gated4_kernel(const float* gate, int64_t ldg, const float* up, int64_t ldu, int64_t F, Act a,
                              float* out) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t r = blockIdx.y;
  for (int64_t f = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 4; f < F; f += int64_t(gridDim.x) * blockDim.x * 4) {
    const float4 g = *reinterpret_cast<const float4*>(gate + r * ldg + f);
    const float4 u = *reinterpret_cast<const float4*>(up + r * ldu + f);
    *reinterpret_cast<float4*>(out + r * F + f) =
        make_float4(dev::act_f(g.x, a) * u.x, dev::act_f(g.y, a) * u.y, dev::act_f(g.z, a) * u.z,
                    dev::act_f(g.w, a) * u.w);
  }
}

__global__ void add_kernel(float* a, const float* b, int64_t n) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a[i] += b[i];
}

__global__ void add4_kernel(float4* a, const float4* b, int64_t n4) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4;
       i += int64_t(gridDim.x) * blockDim.x) {
    float4 x = a[i];
    const float4 y = b[i];
    x.x += y.x, x.y += y.y, x.z += y.z, x.w += y.w;
    a[i] = x;
  }
}

__global__ void softcap_kernel(float* x, int64_t n, float cap) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = tanhf(x[i] / cap) * cap;
}

template <class T>
__global__ void embedding_kernel(const void* table, int64_t C, const int64_t* ids, int64_t offset,
                                 float scale, float* out) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t r = blockIdx.y, row = ids[r] + offset;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C;
       c += int64_t(gridDim.x) * blockDim.x)
    out[r * C + c] = dev::load1<T>(table, row * C + c) * scale;
}

template <class S, class T>
__global__ void copy_rows_kernel(const void* src, int64_t lds, int64_t cols, void* dst, int64_t ldd,
                                 const int64_t* dst_row0) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t r = blockIdx.y;
  if (dst_row0) dst = static_cast<char*>(dst) + *dst_row0 * ldd * T::kBytes;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols;
       c += int64_t(gridDim.x) * blockDim.x) {
    const float v = dev::load1<S>(src, r * lds + c);
    if constexpr (T::kBytes == 4)
      static_cast<float*>(dst)[r * ldd + c] = v;
    else if constexpr (std::is_same_v<T, dev::F16>)
      static_cast<__half*>(dst)[r * ldd + c] = __float2half_rn(v);
    else
      static_cast<__nv_bfloat16*>(dst)[r * ldd + c] = __float2bfloat16_rn(v);
  }
}

// copy_rows_kernel four columns a thread for rows, strides and pointers that allow it, the same
// values: f32 to any (16-byte loads, 8- or 16-byte stores: the dy and head rounding of training),
// or 16-bit to f32 (8-byte loads, 16-byte stores: the widening of training's kept activations).
template <class S, class T>
__global__ void copy_rows4_kernel(const void* src, int64_t lds, int64_t cols4, void* dst, int64_t ldd,
                                  const int64_t* dst_row0) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t r = blockIdx.y;
  if (dst_row0) dst = static_cast<char*>(dst) + *dst_row0 * ldd * T::kBytes;
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols4;
       c += int64_t(gridDim.x) * blockDim.x) {
    float4 v;
    if constexpr (S::kBytes == 4) {
      v = reinterpret_cast<const float4*>(static_cast<const float*>(src) + r * lds)[c];
    } else {
      const uint2 u = reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(src) + r * lds)[c];
      dev::unpack2<S>(u.x, v.x, v.y);
      dev::unpack2<S>(u.y, v.z, v.w);
    }
    if constexpr (T::kBytes == 4)
      reinterpret_cast<float4*>(static_cast<float*>(dst) + r * ldd)[c] = v;
    else
      reinterpret_cast<uint2*>(static_cast<uint16_t*>(dst) + r * ldd)[c] =
          make_uint2(dev::pack2<T>(v.x, v.y), dev::pack2<T>(v.z, v.w));
  }
}

// One block per token; its threads walk the (head h, pair d) of the token, d < rot_dim / 2
// rotating the pair (d, d + half).
__global__ void rope_kernel(float* x, int64_t ldx, int64_t H, int64_t D, const float* cos, const float* sin,
                            int64_t half) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t t = blockIdx.x;
  const float* c = cos + t * half;
  const float* s = sin + t * half;
  for (int64_t hd = threadIdx.x; hd < H * half; hd += blockDim.x) {
    const int64_t h = hd / half, d = hd % half;
    float* v = x + t * ldx + h * D;
    const float a = v[d], b = v[d + half];
    v[d] = __fsub_rn(__fmul_rn(a, c[d]), __fmul_rn(b, s[d]));
    v[d + half] = __fadd_rn(__fmul_rn(b, c[d]), __fmul_rn(a, s[d]));
  }
}

// One decode step's rope and KV-cache write in one launch: block (t, j) over Hq + 2 Hkv heads
// of token t. j < Hq: q head j rotated in place; next Hkv: k head rotated in place and its row
// stored to kc at row0 + t; last Hkv: v head stored to vc. The same arithmetic as rope_kernel
// followed by copy_rows_kernel.
template <class T>
__device__ __forceinline__ void store_as(void* base, int64_t i, float v) {
  if constexpr (T::kBytes == 4)
    static_cast<float*>(base)[i] = v;
  else if constexpr (std::is_same_v<T, dev::F16>)
    static_cast<__half*>(base)[i] = __float2half_rn(v);
  else
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
}

// Head j of token t: threads i, i + n, ... of the ones given over its dims.
template <class T>
__device__ __forceinline__ void rope_kv_head(const RopeKv& a, int64_t t, int64_t j, int i, int n) {
  const int64_t row = a.table ? a.row0_dev[t] : (a.row0_dev ? *a.row0_dev : a.row0) + t;
  void* kc = a.table ? reinterpret_cast<void*>(a.table[t]) : a.kc;
  void* vc = a.table ? reinterpret_cast<void*>(a.table[a.T + t]) : a.vc;
  const int64_t half = a.rot_dim / 2;
  if (j < a.Hq + a.Hkv) {
    const bool is_q = j < a.Hq;
    const int64_t h = is_q ? j : j - a.Hq;
    float* v = is_q ? a.q + t * a.ldq + h * a.D : a.k + t * a.ldk + h * a.D;
    const float* c = a.cos + t * half;
    const float* s = a.sin + t * half;
    for (int64_t d = i; d < half; d += n) {
      const float x0 = v[d], x1 = v[d + half];
      const float r0 = __fsub_rn(__fmul_rn(x0, c[d]), __fmul_rn(x1, s[d]));
      const float r1 = __fadd_rn(__fmul_rn(x1, c[d]), __fmul_rn(x0, s[d]));
      v[d] = r0, v[d + half] = r1;
      if (!is_q) {
        store_as<T>(kc, row * a.ldc + h * a.D + d, r0);
        store_as<T>(kc, row * a.ldc + h * a.D + d + half, r1);
      }
    }
    if (!is_q)
      for (int64_t d = a.rot_dim + i; d < a.D; d += n) store_as<T>(kc, row * a.ldc + h * a.D + d, v[d]);
    return;
  }
  const int64_t h = j - a.Hq - a.Hkv;
  const float* v = a.v + t * a.ldv + h * a.D;
  for (int64_t d = i; d < a.D; d += n) store_as<T>(vc, row * a.ldc + h * a.D + d, v[d]);
}

// Few tokens (decode): block (t, j), its threads over the head's dims.
template <class T>
__global__ void rope_kv_kernel(RopeKv a) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t heads = a.Hq + 2 * a.Hkv;
  rope_kv_head<T>(a, blockIdx.x / heads, blockIdx.x % heads, threadIdx.x, blockDim.x);
}

// Many tokens (prefill): block t, a warp a head at a time (7B prefill-512 on an H100: the block
// a head form launched 49k blocks of 128 threads, half of them idle, 61 us a layer).
template <class T>
__global__ void rope_kv_rows_kernel(RopeKv a) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t j = warp; j < a.Hq + 2 * a.Hkv; j += warps) rope_kv_head<T>(a, blockIdx.x, j, lane, 32);
}

__global__ void argmax_kernel(const float* x, int64_t V, int64_t* out) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float bv[kRowThreads];
  __shared__ int64_t bi[kRowThreads];
  const float* xr = x + blockIdx.x * V;
  float best = -INFINITY;
  int64_t idx = V;  // no element yet
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const float v = xr[c];
    // torch.argmax: NaN is the maximum; the first occurrence wins
    if (idx == V || v > best || (isnan(v) && !isnan(best))) best = v, idx = c;
  }
  bv[threadIdx.x] = best;
  bi[threadIdx.x] = idx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float ov = bv[threadIdx.x + s];
      const int64_t oi = bi[threadIdx.x + s];
      const float mv = bv[threadIdx.x];
      const int64_t mi = bi[threadIdx.x];
      bool take;
      if (oi == V)
        take = false;
      else if (mi == V)
        take = true;
      else if (isnan(mv) || isnan(ov))
        take = isnan(ov) && (!isnan(mv) || oi < mi);
      else
        take = ov > mv || (ov == mv && oi < mi);
      if (take) bv[threadIdx.x] = ov, bi[threadIdx.x] = oi;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = bi[0] == V ? 0 : bi[0];
}

__global__ void lse_kernel(const float* x, int64_t V, float* out) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * V;
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) m = fmaxf(m, xr[c]);
  m = block_max(m, red);
  float s = 0.0f;
  if (m != -INFINITY)
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) s += expf(xr[c] - m);
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[blockIdx.x] = m == -INFINITY ? m : m + logf(s);
}

}  // namespace

void rms_norm(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt, float eps,
              bool add_unit_offset, float* out) {
  if (M == 0 || C == 0) return;
  DeviceScope ds(l.device);
  with_float_dtype("cuda::rms_norm", wdt, [&](auto W) {
    cuda::launch(rms_norm_kernel<decltype(W), false>, dim3(unsigned(M)), dim3(norm_threads(C)), 0,
                 as_stream(l.stream), const_cast<float*>(x), nullptr, C, w, eps,
                 add_unit_offset ? 1.0f : 0.0f, out);
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void add_rms_norm(const Launch& l, float* h, const float* r, int64_t M, int64_t C, const void* w, DType wdt,
                  float eps, bool add_unit_offset, float* out) {
  if (M == 0 || C == 0) return;
  DeviceScope ds(l.device);
  with_float_dtype("cuda::add_rms_norm", wdt, [&](auto W) {
    cuda::launch(rms_norm_kernel<decltype(W), true>, dim3(unsigned(M)), dim3(norm_threads(C)), 0,
                 as_stream(l.stream), h, r, C, w, eps, add_unit_offset ? 1.0f : 0.0f, out);
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void layer_norm(const Launch& l, const float* x, int64_t M, int64_t C, const void* w, DType wdt,
                const void* b, DType bdt, float eps, float* out) {
  if (M == 0 || C == 0) return;
  DeviceScope ds(l.device);
  with_float_dtype("cuda::layer_norm", wdt, [&](auto W) {
    with_float_dtype("cuda::layer_norm", b ? bdt : DType::F32, [&](auto B) {
      cuda::launch(layer_norm_kernel<decltype(W), decltype(B)>, dim3(unsigned(M)), dim3(kRowThreads), 0,
                   as_stream(l.stream), x, C, w, b, eps, out);
    });
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void activate(const Launch& l, float* x, int64_t n, Act a) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(activate_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), x, n, a);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void gated_activation(const Launch& l, const float* gate, int64_t ld_gate, const float* up, int64_t ld_up,
                      int64_t rows, int64_t F, Act a, float* out) {
  if (rows == 0 || F == 0) return;
  DeviceScope ds(l.device);
  if (F % 4 == 0 && ld_gate % 4 == 0 && ld_up % 4 == 0 && aligned(gate, 16) && aligned(up, 16) && aligned(out, 16))
    cuda::launch(gated4_kernel, dim3(dim3(grid_for(F / 4), unsigned(rows))), dim3(256), 0, as_stream(l.stream),
                 gate, ld_gate, up, ld_up, F, a, out);
  else
    cuda::launch(gated_kernel, dim3(dim3(grid_for(F), unsigned(rows))), dim3(256), 0, as_stream(l.stream), gate,
                 ld_gate, up, ld_up, F, a, out);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void add(const Launch& l, float* a, const float* b, int64_t n) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  if (n % 4 == 0 && aligned(a, 16) && aligned(b, 16))
    cuda::launch(add4_kernel, dim3(grid_for(n / 4)), dim3(256), 0, as_stream(l.stream), reinterpret_cast<float4*>(a),
                 reinterpret_cast<const float4*>(b), n / 4);
  else
    cuda::launch(add_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), a, b, n);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void softcap(const Launch& l, float* x, int64_t n, float cap) {
  if (n == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(softcap_kernel, dim3(grid_for(n)), dim3(256), 0, as_stream(l.stream), x, n, cap);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void embedding(const Launch& l, const void* table, DType dt, int64_t C, const int64_t* ids, int64_t R,
               int64_t offset, float scale, float* out) {
  if (R == 0 || C == 0) return;
  DeviceScope ds(l.device);
  with_float_dtype("cuda::embedding", dt, [&](auto T) {
    cuda::launch(embedding_kernel<decltype(T)>, dim3(dim3(grid_for(C), unsigned(R))), dim3(256), 0,
                 as_stream(l.stream), table, C, ids, offset, scale, out);
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void copy_rows(const Launch& l, const void* src, DType src_dt, int64_t ld_src, int64_t rows, int64_t cols,
               void* dst, DType dst_dt, int64_t ld_dst, const int64_t* dst_row0) {
  if (rows == 0 || cols == 0) return;
  DeviceScope ds(l.device);
  const bool four = (src_dt == DType::F32 || dst_dt == DType::F32) && cols % 4 == 0 && ld_src % 4 == 0 &&
                    ld_dst % 4 == 0 && aligned(src, 4 * dtype_nbytes(src_dt, 1)) &&
                    aligned(dst, 4 * dtype_nbytes(dst_dt, 1));
  with_float_dtype("cuda::copy_rows", src_dt, [&](auto S) {
    with_float_dtype("cuda::copy_rows", dst_dt, [&](auto T) {
      if (four)
        cuda::launch(copy_rows4_kernel<decltype(S), decltype(T)>,
                     dim3(dim3(grid_for(cols / 4), unsigned(rows))), dim3(256), 0, as_stream(l.stream), src,
                     ld_src, cols / 4, dst, ld_dst, dst_row0);
      else
        cuda::launch(copy_rows_kernel<decltype(S), decltype(T)>, dim3(dim3(grid_for(cols), unsigned(rows))),
                     dim3(256), 0, as_stream(l.stream), src, ld_src, cols, dst, ld_dst, dst_row0);
    });
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void copy_rows(const Launch& l, const float* src, int64_t ld_src, int64_t rows, int64_t cols, void* dst,
               DType dst_dt, int64_t ld_dst, const int64_t* dst_row0) {
  copy_rows(l, src, DType::F32, ld_src, rows, cols, dst, dst_dt, ld_dst, dst_row0);
}

void apply_rope(const Launch& l, float* x, int64_t ld_x, int64_t T, int64_t H, int64_t D, const float* cos,
                const float* sin, int64_t rot_dim) {
  if (T == 0 || H == 0 || rot_dim < 2) return;
  DeviceScope ds(l.device);
  cuda::launch(rope_kernel, dim3(unsigned(T)), dim3(256), 0, as_stream(l.stream), x, ld_x, H, D, cos, sin,
               rot_dim / 2);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

// Tokens from which rope_kv_write launches a block a token rather than a block a head.
constexpr int64_t kRopeRowsFrom = 16;

void rope_kv_write(const Launch& l, const RopeKv& a, DType cache_dt) {
  if (a.T == 0) return;
  DeviceScope ds(l.device);
  with_float_dtype("cuda::rope_kv_write", cache_dt, [&](auto T) {
    if (a.T >= kRopeRowsFrom)
      cuda::launch(rope_kv_rows_kernel<decltype(T)>, dim3(unsigned(a.T)), dim3(256), 0, as_stream(l.stream), a);
    else
      cuda::launch(rope_kv_kernel<decltype(T)>, dim3(unsigned(a.T * (a.Hq + 2 * a.Hkv))), dim3(128), 0,
                   as_stream(l.stream), a);
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void argmax_rows(const Launch& l, const float* x, int64_t rows, int64_t V, int64_t* out) {
  if (rows == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(argmax_kernel, dim3(unsigned(rows)), dim3(kRowThreads), 0, as_stream(l.stream), x, V, out);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

void log_sum_exp_rows(const Launch& l, const float* x, int64_t rows, int64_t V, float* out) {
  if (rows == 0) return;
  DeviceScope ds(l.device);
  cuda::launch(lse_kernel, dim3(unsigned(rows)), dim3(kRowThreads), 0, as_stream(l.stream), x, V, out);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

}  // namespace nibble::cuda
