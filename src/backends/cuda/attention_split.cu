// Causal attention over a KV cache (nn_cuda.h), flash-decoding style: the key range [0, S) is
// cut into n_split chunks; block (split, i * Hq + h) runs an online softmax of query row i,
// head h over its chunk (one warp per key, lanes over the head dim, lane + 32 e for e < 8 so
// D <= 256 and the K/V loads of a warp are coalesced), the block's warps merge their
// partials in shared memory, and a combine pass merges the splits (partials in the
// workspace). With one split the block writes the output directly. Math in f32, as the CPU.
#include <cuda_runtime.h>

#include <algorithm>

#include "backends/cuda/check.h"
#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/nn_cuda.h"

namespace nibble::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxE = 8;  // head dims up to 32 * kMaxE

struct Params {
  int64_t T, S, Hq, Hkv, D, Dv, q_offset, window, ldq, ldk, ldv, chunk;
  float scale, softcap;
  const float* alibi;
  const float* q;
  const void* k;
  const void* v;
  float* out;   // [T, Hq, Dv] when n_split == 1
  float* part;  // [T * Hq, n_split, Dv + 2] partials (acc, m, l) otherwise
  int n_split;
  const int64_t* pos_dev;  // decode position on the device, or nullptr
};

template <class KV>
__global__ void __launch_bounds__(kWarps * 32) attn_split_kernel(Params p) {
  __shared__ float sm[kWarps], sl[kWarps], sacc[kWarps][32 * kMaxE];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t split = blockIdx.x, row = blockIdx.y, i = row / p.Hq, h = row % p.Hq;
  const int64_t q_offset = p.pos_dev ? *p.pos_dev : p.q_offset, S = p.pos_dev ? q_offset + 1 : p.S;
  const int64_t g = h / (p.Hq / p.Hkv), pos = q_offset + i;
  int64_t lo = split * p.chunk, hi = lo + p.chunk < S ? lo + p.chunk : S;
  if (hi > pos + 1) hi = pos + 1;
  if (p.window > 0 && lo < pos - p.window + 1) lo = pos - p.window + 1;
  float q[kMaxE], acc[kMaxE];
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) {
    const int64_t d = lane + 32 * e;
    q[e] = d < p.D ? p.q[i * p.ldq + h * p.D + d] : 0.0f;
    acc[e] = 0.0f;
  }
  const float slope = p.alibi ? p.alibi[h] : 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = lo + warp; j < hi; j += kWarps) {
    const int64_t kb = j * p.ldk + g * p.D, vb = j * p.ldv + g * p.Dv;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e) {
      const int64_t d = lane + 32 * e;
      if (d < p.D) s += q[e] * dev::load1<KV>(p.k, kb + d);
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    s *= p.scale;
    if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
    if (p.alibi) s += slope * float(j);
    const float mn = fmaxf(m, s), corr = expf(m - mn), e_s = expf(s - mn);
    l = l * corr + e_s;
#pragma unroll
    for (int e = 0; e < kMaxE; ++e) {
      const int64_t d = lane + 32 * e;
      acc[e] = acc[e] * corr + (d < p.Dv ? e_s * dev::load1<KV>(p.v, vb + d) : 0.0f);
    }
    m = mn;
  }
  // merge the warps
  if (lane == 0) sm[warp] = m, sl[warp] = l;
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  const float f = m == -INFINITY ? 0.0f : expf(m - M);
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) sacc[warp][lane + 32 * e] = acc[e] * f;
  __syncthreads();
  float L = 0.0f;
  for (int w = 0; w < kWarps; ++w) L += sm[w] == -INFINITY ? 0.0f : sl[w] * expf(sm[w] - M);
  for (int64_t d = threadIdx.x; d < p.Dv; d += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < kWarps; ++w) a += sacc[w][d];
    if (p.n_split == 1) {
      p.out[row * p.Dv + d] = L > 0.0f ? a / L : 0.0f;
    } else {
      p.part[(row * p.n_split + split) * (p.Dv + 2) + d] = a;
    }
  }
  if (p.n_split > 1 && threadIdx.x == 0) {
    float* pp = p.part + (row * p.n_split + split) * (p.Dv + 2) + p.Dv;
    pp[0] = M;
    pp[1] = L;
  }
}

// One block per (i, h): merges the n_split partials of that row.
__global__ void attn_combine_kernel(const float* part, int n_split, int64_t Dv, float* out) {
  const int64_t row = blockIdx.x;
  const float* pr = part + row * n_split * (Dv + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, pr[s * (Dv + 2) + Dv]);
  float L = 0.0f;
  for (int s = 0; s < n_split; ++s) {
    const float ms = pr[s * (Dv + 2) + Dv];
    if (ms != -INFINITY) L += pr[s * (Dv + 2) + Dv + 1] * expf(ms - M);
  }
  for (int64_t d = threadIdx.x; d < Dv; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < n_split; ++s) {
      const float ms = pr[s * (Dv + 2) + Dv];
      if (ms != -INFINITY) a += pr[s * (Dv + 2) + d] * expf(ms - M);
    }
    out[row * Dv + d] = L > 0.0f ? a / L : 0.0f;
  }
}

int sm_count() {
  int dev = 0, n = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&dev));
  NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// Splits so that about 8 blocks per multiprocessor run, with at least 16 keys per split (4 a
// warp): each warp walks its keys one after another, so short splits keep the latency of a
// decode step's attention low even at short contexts.
int n_splits(const Attention& a) {
  const int64_t rows = a.T * a.Hq;
  const int64_t want = ceil_div(8 * int64_t(sm_count()), std::max<int64_t>(rows, 1));
  return int(std::clamp<int64_t>(want, 1, std::max<int64_t>(ceil_div(a.S, 16), 1)));
}

void check(const Attention& a) {
  if (a.D > 32 * kMaxE || a.Dv > 32 * kMaxE || a.D <= 0 || a.Dv <= 0)
    throw UnsupportedError(
        detail::str("cuda::attention: head dims D=", a.D, " Dv=", a.Dv, " (at most ", 32 * kMaxE, ")"));
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0)
    throw ShapeError(detail::str("cuda::attention: Hq=", a.Hq, " is not a multiple of Hkv=", a.Hkv));
  if (a.pos && a.T != 1)
    throw ShapeError(detail::str("cuda::attention: a position on the device needs one query row, got T=", a.T));
}

}  // namespace

size_t attention_workspace_bytes(const Attention& a) {
  const int ns = n_splits(a);
  return ns == 1 ? 0 : size_t(a.T * a.Hq) * size_t(ns) * size_t(a.Dv + 2) * sizeof(float);
}

void attention(const Launch& l, const Attention& a) {
  if (a.T == 0 || a.Hq == 0) return;
  check(a);
  int prev = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(l.device));
  const int ns = n_splits(a);
  const size_t need = attention_workspace_bytes(a);
  if (need > l.workspace_bytes || (need && !l.workspace))
    throw InternalError(
        detail::str("cuda::attention: workspace of ", l.workspace_bytes, " bytes, need ", need));
  Params p{a.T,     a.S,       a.Hq,       a.Hkv,
           a.D,     a.Dv,      a.q_offset, a.window,
           a.ldq,   a.ldk,     a.ldv,      ceil_div(std::max<int64_t>(a.S, 1), ns),
           a.scale, a.softcap, a.alibi,    a.q,
           a.k,     a.v,       a.out,      static_cast<float*>(l.workspace),
           ns,      a.pos};
  const dim3 grid(unsigned(ns), unsigned(a.T * a.Hq));
  with_float_dtype("cuda::attention", a.kv_dtype, [&](auto KV) {
    attn_split_kernel<decltype(KV)><<<grid, kWarps * 32, 0, as_stream(l.stream)>>>(p);
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
  if (ns > 1) {
    attn_combine_kernel<<<unsigned(a.T * a.Hq), 128, 0, as_stream(l.stream)>>>(p.part, ns, a.Dv, a.out);
    NIBBLE_CUDA_CHECK_LAUNCH();
  }
  if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(prev));
}

}  // namespace nibble::cuda
