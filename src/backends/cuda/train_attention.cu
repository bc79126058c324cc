// Backward of causal self-attention (train_cuda.h), recomputing the probabilities as the host
// reference (ops/train_attention.cpp) does, in two kernels with no atomics. A warp owns one row
// of a result and its lanes own head dims (lane + 32 c), so every q·k and dO·v is a warp sum:
//   rows: warp (query row i, head h) walks keys j <= i twice: an online softmax gives the row's
//         log-sum-exp and Dsum = sum_j p_j dp_j (kept in the workspace), then
//         dq_i = sum_j ds_ij k_j with ds_ij = p_ij (dp_ij - Dsum_i) d(logit)/d(q.k);
//   keys: warp (key j, kv head g) walks the query rows i >= j (in the window) of every head of
//         its GQA group: dv_j = sum p_ij dO_i, dk_j = sum ds_ij q_i, from the saved statistics.
// Nothing of size [H, T, T] exists; each result is written once (dq, dk, dv overwritten).
#include <cuda_runtime.h>

#include <cfloat>

#include "backends/cuda/attn_logit.cuh"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/train_attention_tc.h"
#include "backends/cuda/train_cuda.h"
#include "nibble/error.h"

namespace nibble::cuda {
namespace {

constexpr int kWarps = 4;  // warps a block, one row each
constexpr int kMaxE = 8;   // head dims up to 32 * kMaxE

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// This lane's dims of a head vector (zero past n).
__device__ __forceinline__ void load_dims(float (&r)[kMaxE], const float* p, int64_t n, int lane) {
#pragma unroll
  for (int c = 0; c < kMaxE; ++c) {
    const int64_t e = lane + 32 * c;
    r[c] = e < n ? p[e] : 0.0f;
  }
}

// This lane's part of x . p (its dims, in order).
__device__ __forceinline__ float dot_part(const float (&x)[kMaxE], const float* p, int64_t n, int lane) {
  float acc = 0.0f;
#pragma unroll
  for (int c = 0; c < kMaxE; ++c) {
    const int64_t e = lane + 32 * c;
    if (e < n) acc += x[c] * p[e];
  }
  return acc;
}

__device__ __forceinline__ float dot_dims(const float (&x)[kMaxE], const float* p, int64_t n, int lane) {
  return warp_sum(dot_part(x, p, n, lane));
}

// warp_sum of each of v[0..N): the same butterfly a value, the N interleaved so their shuffles
// overlap (one dependent chain of 5 shuffles a key was what bounded these kernels).
template <int N>
__device__ __forceinline__ void warp_sum_n(float (&v)[N]) {
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int u = 0; u < N; ++u) v[u] += __shfl_xor_sync(0xffffffffu, v[u], o);
}

constexpr int kU = 4;  // keys (or query rows) whose dot products are reduced together

// f(x . a_t, y . b_t, t) for t = t0 .. t1 in order, the two dot products of kU consecutive t
// reduced together, then one t at a time: a_t = a0 + t * sa, b_t = b0 + t * sb.
template <class F>
__device__ __forceinline__ void walk_dots(const float (&x)[kMaxE], const float* a0, int64_t sa, int64_t na,
                                          const float (&y)[kMaxE], const float* b0, int64_t sb, int64_t nb,
                                          int64_t t0, int64_t t1, int lane, F&& f) {
  int64_t t = t0;
  for (; t + kU <= t1 + 1; t += kU) {
    float v[2 * kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      v[u] = dot_part(x, a0 + (t + u) * sa, na, lane);
      v[kU + u] = dot_part(y, b0 + (t + u) * sb, nb, lane);
    }
    warp_sum_n(v);
#pragma unroll
    for (int u = 0; u < kU; ++u) f(v[u], v[kU + u], t + u);
  }
  for (; t <= t1; ++t) f(dot_dims(x, a0 + t * sa, na, lane), dot_dims(y, b0 + t * sb, nb, lane), t);
}

using Score = dev::Logit;

__device__ __forceinline__ Score score(const AttentionBackward& a, float qk, int64_t h, int64_t j) {
  return dev::attn_logit(qk, a.scale, a.softcap, a.alibi != nullptr, a.alibi ? a.alibi[h] : 0.0f, j);
}

// stats: [2][T * Hq] (log-sum-exp, Dsum) of each (i, h).
__global__ void __launch_bounds__(kWarps * 32) attn_bwd_rows_kernel(AttentionBackward a, float* stats) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= a.T * a.Hq) return;
  const int64_t i = r / a.Hq, h = r % a.Hq, g = h / (a.Hq / a.Hkv);
  const int64_t ks = a.Hkv * a.D, vs = a.Hkv * a.Dv;
  const float* kh = static_cast<const float*>(a.k) + g * a.D;  // key j at kh + j * ks
  const float* vh = static_cast<const float*>(a.v) + g * a.Dv;
  float q[kMaxE], dout[kMaxE];
  load_dims(q, a.q + r * a.D, a.D, lane);
  load_dims(dout, a.dout + r * a.Dv, a.Dv, lane);
  const int64_t lo = a.window > 0 ? max(int64_t(0), i - a.window + 1) : 0;
  float m = -FLT_MAX, l = 0.0f, pd = 0.0f;
  // keys in groups of kU (q.k and dout.v reduced together), then one at a time; in key order
  auto fold = [&](float qk, float dp, int64_t j) {
    const float s = score(a, qk, h, j).s;
    const float mn = fmaxf(m, s), corr = expf(m - mn), e = expf(s - mn);
    l = l * corr + e;
    pd = pd * corr + e * dp;
    m = mn;
  };
  walk_dots(q, kh, ks, a.D, dout, vh, vs, a.Dv, lo, i, lane, fold);
  const float lse = m + logf(l), dsum = pd / l;
  float dq[kMaxE] = {};
  auto add_dq = [&](float qk, float dp, int64_t j) {
    const float* kj = kh + j * ks;
    const Score sc = score(a, qk, h, j);
    const float p = expf(sc.s - lse);
    const float ds = p * (dp - dsum) * sc.dl;
#pragma unroll
    for (int c = 0; c < kMaxE; ++c) {
      const int64_t e = lane + 32 * c;
      if (e < a.D) dq[c] += ds * kj[e];
    }
  };
  walk_dots(q, kh, ks, a.D, dout, vh, vs, a.Dv, lo, i, lane, add_dq);
#pragma unroll
  for (int c = 0; c < kMaxE; ++c) {
    const int64_t e = lane + 32 * c;
    if (e < a.D) a.dq[r * a.D + e] = dq[c];
  }
  if (lane == 0) stats[r] = lse, stats[a.T * a.Hq + r] = dsum;
}

__global__ void __launch_bounds__(kWarps * 32) attn_bwd_keys_kernel(AttentionBackward a, const float* stats) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= a.T * a.Hkv) return;
  const int64_t j = r / a.Hkv, g = r % a.Hkv, rep = a.Hq / a.Hkv;
  float k[kMaxE], v[kMaxE], dk[kMaxE] = {}, dv[kMaxE] = {};
  load_dims(k, static_cast<const float*>(a.k) + r * a.D, a.D, lane);
  load_dims(v, static_cast<const float*>(a.v) + r * a.Dv, a.Dv, lane);
  const int64_t hi = a.window > 0 ? min(a.T - 1, j + a.window - 1) : a.T - 1;
  // query rows i in groups of kU (k.q and v.dout reduced together), then one at a time; in order
  auto add = [&](float kq, float vd, int64_t h, int64_t i) {
    const int64_t qi = i * a.Hq + h;
    const float* q = a.q + qi * a.D;
    const float* dout = a.dout + qi * a.Dv;
    const Score sc = score(a, kq, h, j);
    const float p = expf(sc.s - stats[qi]);
    const float ds = p * (vd - stats[a.T * a.Hq + qi]) * sc.dl;
#pragma unroll
    for (int c = 0; c < kMaxE; ++c) {
      const int64_t e = lane + 32 * c;
      if (e < a.Dv) dv[c] += p * dout[e];
      if (e < a.D) dk[c] += ds * q[e];
    }
  };
  for (int64_t h = g * rep; h < (g + 1) * rep; ++h)  // query row i of head h: qi = i * Hq + h
    walk_dots(k, a.q + h * a.D, a.Hq * a.D, a.D, v, a.dout + h * a.Dv, a.Hq * a.Dv, a.Dv, j, hi, lane,
              [&](float kq, float vd, int64_t i) { add(kq, vd, h, i); });
#pragma unroll
  for (int c = 0; c < kMaxE; ++c) {
    const int64_t e = lane + 32 * c;
    if (e < a.D) a.dk[r * a.D + e] = dk[c];
    if (e < a.Dv) a.dv[r * a.Dv + e] = dv[c];
  }
}

}  // namespace

size_t attention_backward_workspace_bytes(const AttentionBackward& a) {
  const size_t stats = size_t(2 * a.T * a.Hq) * sizeof(float);
  return a.kv_dtype == DType::F32 ? stats : stats + attention_backward_tc_partials_bytes(a);
}

void attention_backward(const Launch& l, const AttentionBackward& a) {
  if (a.T == 0 || a.Hq == 0) return;
  if (a.kv_dtype != DType::F32) return attention_backward_tc(l, a);
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0)
    throw ShapeError(
        detail::str("cuda::attention_backward: Hq ", a.Hq, " and Hkv ", a.Hkv, " not supported"));
  if (a.D > 32 * kMaxE || a.Dv > 32 * kMaxE || a.D <= 0 || a.Dv <= 0)
    throw UnsupportedError(detail::str("cuda::attention_backward: head dims D=", a.D, " Dv=", a.Dv,
                                       " (at most ", 32 * kMaxE, ")"));
  const size_t need = attention_backward_workspace_bytes(a);
  if (need > l.workspace_bytes || !l.workspace)
    throw InternalError(
        detail::str("cuda::attention_backward: workspace of ", l.workspace_bytes, " bytes, need ", need));
  DeviceScope ds(l.device);
  const cudaStream_t s = as_stream(l.stream);
  float* stats = static_cast<float*>(l.workspace);
  cuda::launch(attn_bwd_rows_kernel, dim3(unsigned(ceil_div(a.T * a.Hq, kWarps))), dim3(kWarps * 32), 0, s, a,
               stats);
  cuda::launch(attn_bwd_keys_kernel, dim3(unsigned(ceil_div(a.T * a.Hkv, kWarps))), dim3(kWarps * 32), 0, s,
               a, static_cast<const float*>(stats));
}

}  // namespace nibble::cuda
