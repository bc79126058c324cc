// Backward of causal self-attention on tensor cores (flash-attention 2's backward) for 16-bit k/v:
// mma.m16n8k16 with f32 accumulation, q and dout rounded to the k/v dtype as they are staged in
// shared memory, the probabilities P and dS rounded to it as the A operands of their products.
// Two kernels, no atomics (deterministic), nothing of size [H, T, T]:
//   dq:  block (64 query rows, head h), a warp 16 rows. Pass 1 over the key tiles: S = Q K^T
//        gives each row's log-sum-exp; Dsum = sum_j p_j dp_j is dO . O when the forward's output
//        O is given, else pass 1 also computes dP = dO V^T for it (online, as the SIMT rows
//        kernel); both kept in the workspace. With O and the forward's log-sum-exp given
//        (attention_prefill_tc writes it) there is no pass 1. Pass 2: P = exp(S - lse), dS = P (dP - Dsum)
//        d(logit)/d(q.k), dq += dS K.
//   dkv: block (64 keys, query head h), a warp 16 keys, over the query rows i >= j in tiles:
//        S^T = K Q^T, dP^T = V dO^T, dv += P^T dO, dk += dS^T Q with the saved statistics.
//        With Hq > Hkv each query head's dk/dv goes to the workspace and a last kernel sums the
//        heads of a group in order.
// K/V tiles are copied by cp.async; shared rows are padded by 8 elements (conflict-free ldmatrix).
// A tile whose every (row, key) pair is visible, with no softcap or ALiBi, skips the per-element
// mask, index and logit work (most tiles of a causal sequence).
#include "backends/cuda/train_attention_tc.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "backends/cuda/attention_tc.h"
#include "backends/cuda/attn_logit.cuh"
#include "backends/cuda/compute_dtype.cuh"
#include "backends/cuda/gemv_frag.cuh"
#include "backends/cuda/kernel_util.cuh"
#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/mma_smem.cuh"
#include "backends/cuda/pdl.cuh"
#include "nibble/error.h"

namespace nibble::cuda {
namespace {

using dev::a_frag;
using dev::b_pair;

constexpr int kWarps = 4;
constexpr int kTile = 16 * kWarps;  // query rows of a dq block, keys of a dkv block
constexpr int kPad = 8;

struct Params {
  int64_t T, Hq, Hkv, window;
  float scale, softcap;
  const float* alibi;
  const float* q;     // [T, Hq, D]
  const float* dout;  // [T, Hq, D]
  const uint16_t* k;  // [T, Hkv, D]
  const uint16_t* v;
  float* dq;  // [T, Hq, D]
  float* dk;  // [T, Hkv, D], or each query head's [T, Hq, D] when Hq > Hkv
  float* dv;
  float* stats;  // [2][T * Hq]: log-sum-exp, Dsum of row (i, h) at i * Hq + h
  const float* o;  // the forward's output [T, Hq, D], or nullptr: Dsum from pass 1's dP
  const float* lse;  // the forward's log-sum-exp of each row [T * Hq], or nullptr (with o: no pass 1)
};

using dev::Logit;

__device__ __forceinline__ Logit logit(const Params& p, float qk, float slope, int64_t j) {
  return dev::attn_logit(qk, p.scale, p.softcap, p.alibi != nullptr, slope, j);
}

// Whether query row i sees key j (causal from position 0, the window).
__device__ __forceinline__ bool visible(const Params& p, int64_t i, int64_t j) {
  return i < p.T && j <= i && (p.window <= 0 || j > i - p.window);
}

// rows [row0, row0 + n) of head h of an f32 [T, Hq, D] tensor into shared memory in KV (zero
// past T).
template <class KV, int D>
__device__ __forceinline__ void stage_rows(uint16_t* dst, const float* src, const Params& p, int64_t h,
                                           int64_t row0, int n) {
  constexpr int P = D + kPad;
  for (int c = threadIdx.x; c < n * (D / 4); c += kWarps * 32) {
    const int r = c / (D / 4), d = (c % (D / 4)) * 4;
    const int64_t i = row0 + r;
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (i < p.T) x = *reinterpret_cast<const float4*>(src + (i * p.Hq + h) * D + d);
    *reinterpret_cast<uint2*>(dst + r * P + d) =
        make_uint2(dev::pack2<KV>(x.x, x.y), dev::pack2<KV>(x.z, x.w));
  }
}

// n rows of k or v (group g) from key j0 into shared memory by cp.async (zero from key `end`).
template <int D>
__device__ __forceinline__ void stage_kv(uint16_t* dst, const uint16_t* src, const Params& p, int64_t g,
                                         int64_t j0, int64_t end, int n) {
  constexpr int P = D + kPad, kChunks = D / 8;
  for (int c = threadIdx.x; c < n * kChunks; c += kWarps * 32) {
    const int r = c / kChunks, ch = c % kChunks;
    const int64_t j = j0 + r;
    const bool ok = j < end;
    dev::cp_async16(dev::smem_addr(dst + r * P + ch * 8), src + ((ok ? j : j0) * p.Hkv + g) * D + ch * 8, ok);
  }
}

template <int N>
__device__ __forceinline__ void zero_acc(float (&c)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
}

template <int D>
constexpr size_t dq_smem_bytes() {
  return size_t(2 * kTile + 4 * kTile) * size_t(D + kPad) * 2;  // Q, dO, then K and V in two buffers
}

template <class KV, int D>
__global__ void __launch_bounds__(kWarps * 32) attn_bwd_dq_tc_kernel(Params p) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  constexpr int P = D + kPad;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* Qs = smem;                // [kTile][P]
  uint16_t* dOs = Qs + kTile * P;     // [kTile][P]
  uint16_t* Ks = dOs + kTile * P;     // [2][kTile][P]
  uint16_t* Vs = Ks + 2 * kTile * P;  // [2][kTile][P]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t h = blockIdx.y, g = h / (p.Hq / p.Hkv);
  const int64_t r0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kTile;  // the longest rows first
  const int64_t hi = min(p.T, r0 + kTile);                           // keys below hi
  int64_t lo = p.window > 0 ? max(int64_t(0), r0 - p.window + 1) : 0;
  lo = lo / kTile * kTile;
  stage_rows<KV, D>(Qs, p.q, p, h, r0, kTile);
  stage_rows<KV, D>(dOs, p.dout, p, h, r0, kTile);
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) a_frag(qf[kk], Qs, P, warp * 16, kk * 16, lane);
  const int64_t row_a = r0 + warp * 16 + (lane >> 2);  // the thread's rows: row_a and row_a + 8
  const float slope = p.alibi ? p.alibi[h] : 0.0f;
  const int64_t w_first = r0 + warp * 16;
  const int64_t w_hi = min(hi, w_first + 16);  // the warp's keys end
  // No softcap or ALiBi: the logit is scale * q.k and its derivative the scale.
  const bool plain = p.softcap <= 0.0f && !p.alibi;
  // Whether every row of the warp sees every key of tile j0 (rows below T, keys at or before
  // the first row, inside the last row's window): then no element needs its mask.
  const auto rows_see_all = [&](int64_t j0) {
    return j0 + kTile - 1 <= w_first && w_first + 15 < p.T && (p.window <= 0 || j0 > w_first + 15 - p.window);
  };
  // f(n, e, i, j) for each accumulator element [n][e] of the warp's rows x tile j0's keys: row i, key j.
  const auto elements = [&](int64_t j0, auto&& f) {
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(n, e, row_a + (e >> 1) * 8, j0 + n * 8 + 2 * (lane & 3) + (e & 1));
  };

  // The key tiles of the block through two shared buffers, f(K tile, V tile, j0) for those the
  // warp's rows see.
  auto walk = [&](auto&& f) {
    __syncthreads();  // every warp done with the buffers
    if (lo < hi) {
      stage_kv<D>(Ks, p.k, p, g, lo, hi, kTile);
      stage_kv<D>(Vs, p.v, p, g, lo, hi, kTile);
      dev::cp_async_commit();
    }
    int buf = 0;
    for (int64_t j0 = lo; j0 < hi; j0 += kTile, buf ^= 1) {
      dev::cp_async_wait_all();
      __syncthreads();  // tile j0 is in, and every warp is done with the other buffer
      if (j0 + kTile < hi) {
        stage_kv<D>(Ks + (buf ^ 1) * kTile * P, p.k, p, g, j0 + kTile, hi, kTile);
        stage_kv<D>(Vs + (buf ^ 1) * kTile * P, p.v, p, g, j0 + kTile, hi, kTile);
        dev::cp_async_commit();
      }
      if (j0 >= w_hi) continue;                                            // after the warp's last row
      if (p.window > 0 && j0 + kTile <= w_first - p.window + 1) continue;  // before its first window
      f(Ks + buf * kTile * P, Vs + buf * kTile * P, j0);
    }
  };
  // S = Q K^T and (with_dp) dP = dO V^T of the warp's 16 rows and a tile's keys.
  auto scores = [&](const uint16_t* Kb, const uint16_t* Vb, float(&s)[kTile / 8][4], float(&dp)[kTile / 8][4],
                    auto with_dp) {
    zero_acc(s);
    if constexpr (decltype(with_dp)::value) zero_acc(dp);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t da[4];
      if constexpr (decltype(with_dp)::value) a_frag(da, dOs, P, warp * 16, kk * 16, lane);
#pragma unroll
      for (int n = 0; n < kTile / 8; n += 2) {
        uint32_t b[4];
        b_pair(b, Kb, P, n, kk * 16, lane);
        dev::mma<KV>(s[n], qf[kk], b[0], b[1]);
        dev::mma<KV>(s[n + 1], qf[kk], b[2], b[3]);
        if constexpr (decltype(with_dp)::value) {
          b_pair(b, Vb, P, n, kk * 16, lane);
          dev::mma<KV>(dp[n], da, b[0], b[1]);
          dev::mma<KV>(dp[n + 1], da, b[2], b[3]);
        }
      }
    }
  };
  using DP = std::true_type;

  // pass 1: log-sum-exp of each row, and Dsum = sum_j p_j dp_j online unless the forward's
  // output O is given: then Dsum = dO . O (sum_j p_j (dO . v_j) = dO . sum_j p_j v_j, dO as
  // rounded for dP) and pass 1 needs only S.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, pd[2] = {0.0f, 0.0f};
  auto pass1_tile = [&](const uint16_t* Kb, const uint16_t* Vb, int64_t j0, auto with_dp) {
    float s[kTile / 8][4], dp[kTile / 8][4];
    scores(Kb, Vb, s, dp, with_dp);
    float tmax[2] = {-INFINITY, -INFINITY};
    if (plain && rows_see_all(j0))
      elements(j0, [&](int n, int e, int64_t, int64_t) {
        s[n][e] *= p.scale;
        tmax[e >> 1] = fmaxf(tmax[e >> 1], s[n][e]);
      });
    else
      elements(j0, [&](int n, int e, int64_t i, int64_t j) {
        s[n][e] = visible(p, i, j) ? logit(p, s[n][e], slope, j).s : -INFINITY;
        tmax[e >> 1] = fmaxf(tmax[e >> 1], s[n][e]);
      });
    float corr[2], ls[2] = {0.0f, 0.0f}, lp[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
      const float mn = fmaxf(m[r], tmax[r]);
      corr[r] = mn == -INFINITY ? 1.0f : __expf(m[r] - mn);
      m[r] = mn;
    }
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = s[n][e] == -INFINITY ? 0.0f : __expf(s[n][e] - m[e >> 1]);
        ls[e >> 1] += pv;
        if constexpr (decltype(with_dp)::value) lp[e >> 1] += pv * dp[n][e];
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] = l[r] * corr[r] + ls[r];
      pd[r] = pd[r] * corr[r] + lp[r];
    }
  };
  const auto pass1 = [&](auto with_dp) {
    walk([&](const uint16_t* Kb, const uint16_t* Vb, int64_t j0) { pass1_tile(Kb, Vb, j0, with_dp); });
  };
  if (p.o) {
    if (p.lse) {  // the forward's statistics: l = 1 at m = lse
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t i = row_a + 8 * r;
        m[r] = i < p.T ? p.lse[i * p.Hq + h] : 0.0f;
        l[r] = i < p.T && (lane & 3) == 0 ? 1.0f : 0.0f;  // summed over the quad below
      }
    } else {
      pass1(std::false_type());
    }
    // pd = dO . O * l (divided by l below): a quad's four lanes take a quarter of D each
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t i = row_a + 8 * r;
      if (i >= p.T) continue;
      const float* orow = p.o + (i * p.Hq + h) * D + (lane & 3) * (D / 4);
      const float* drow = p.dout + (i * p.Hq + h) * D + (lane & 3) * (D / 4);
      float acc = 0.0f;
#pragma unroll
      for (int d = 0; d < D / 4; d += 4) {
        const float4 a = *reinterpret_cast<const float4*>(orow + d);
        const float4 b = *reinterpret_cast<const float4*>(drow + d);
        acc += a.x * dev::round_ct<KV>(b.x) + a.y * dev::round_ct<KV>(b.y) + a.z * dev::round_ct<KV>(b.z) +
               a.w * dev::round_ct<KV>(b.w);
      }
      pd[r] = acc;
    }
  } else {
    pass1(DP());
  }
  float lse[2], dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    pd[r] += __shfl_xor_sync(0xffffffffu, pd[r], 1);
    pd[r] += __shfl_xor_sync(0xffffffffu, pd[r], 2);
    const bool live = l[r] > 0.0f;  // rows past T see no key
    lse[r] = live ? m[r] + logf(l[r]) : 0.0f;
    dsum[r] = live ? (p.o ? pd[r] : pd[r] / l[r]) : 0.0f;
    const int64_t i = row_a + 8 * r;
    if ((lane & 3) == 0 && i < p.T) {
      p.stats[i * p.Hq + h] = lse[r];
      p.stats[p.T * p.Hq + i * p.Hq + h] = dsum[r];
    }
  }

  // pass 2: dq = sum_j dS_ij k_j
  float dq[D / 8][4];
  zero_acc(dq);
  walk([&](const uint16_t* Kb, const uint16_t* Vb, int64_t j0) {
    float s[kTile / 8][4], dp[kTile / 8][4];
    scores(Kb, Vb, s, dp, DP());
    if (plain && rows_see_all(j0))
      elements(j0, [&](int n, int e, int64_t, int64_t) {
        s[n][e] = __expf(s[n][e] * p.scale - lse[e >> 1]) * (dp[n][e] - dsum[e >> 1]) * p.scale;
      });
    else
      elements(j0, [&](int n, int e, int64_t i, int64_t j) {
        float ds = 0.0f;
        if (visible(p, i, j)) {
          const Logit lg = logit(p, s[n][e], slope, j);
          ds = __expf(lg.s - lse[e >> 1]) * (dp[n][e] - dsum[e >> 1]) * lg.dl;
        }
        s[n][e] = ds;
      });
    dev::mma_c_bt<KV, kTile, D>(dq, s, Kb, P, lane);
  });
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = row_a + 8 * r;
    if (i >= p.T) continue;
    float* out = p.dq + (i * p.Hq + h) * D + 2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<float2*>(out + n * 8) = make_float2(dq[n][2 * r], dq[n][2 * r + 1]);
  }
}

// Query rows a dkv tile: 64 where the accumulators are small, 32 for the wide heads.
template <int D>
constexpr int kDkvRows = D <= 64 ? 64 : 32;

template <int D>
constexpr size_t dkv_smem_bytes() {
  return size_t(2 * kTile + 2 * kDkvRows<D>) * size_t(D + kPad) * 2 + 2 * kDkvRows<D> * sizeof(float);
}

template <class KV, int D>
__global__ void __launch_bounds__(kWarps * 32) attn_bwd_dkv_tc_kernel(Params p) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  constexpr int P = D + kPad, QT = kDkvRows<D>;
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* Ks = smem;                                 // [kTile][P]
  uint16_t* Vs = Ks + kTile * P;                       // [kTile][P]
  uint16_t* Qs = Vs + kTile * P;                       // [QT][P]
  uint16_t* dOs = Qs + QT * P;                         // [QT][P]
  float* st = reinterpret_cast<float*>(dOs + QT * P);  // [2][QT]: lse, Dsum of the tile's rows
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t h = blockIdx.y, rep = p.Hq / p.Hkv, g = h / rep;
  const int64_t j0 = int64_t(blockIdx.x) * kTile;  // the most work (key 0) first
  stage_kv<D>(Ks, p.k, p, g, j0, p.T, kTile);
  stage_kv<D>(Vs, p.v, p, g, j0, p.T, kTile);
  dev::cp_async_commit();
  const int64_t jw = j0 + warp * 16;       // the warp's first key
  const int64_t key_a = jw + (lane >> 2);  // the thread's keys: key_a and key_a + 8
  const float slope = p.alibi ? p.alibi[h] : 0.0f;
  const bool plain = p.softcap <= 0.0f && !p.alibi;  // the logit is scale * q.k
  const int64_t i_end = p.window > 0 ? min(p.T, j0 + kTile - 1 + p.window) : p.T;  // rows below
  float dk[D / 8][4], dv[D / 8][4];
  zero_acc(dk);
  zero_acc(dv);
  for (int64_t i0 = j0 / QT * QT; i0 < i_end; i0 += QT) {
    __syncthreads();  // every warp done with the last tile
    stage_rows<KV, D>(Qs, p.q, p, h, i0, QT);
    stage_rows<KV, D>(dOs, p.dout, p, h, i0, QT);
    for (int c = tid; c < QT; c += kWarps * 32) {
      const int64_t i = i0 + c;
      st[c] = i < p.T ? p.stats[i * p.Hq + h] : 0.0f;
      st[QT + c] = i < p.T ? p.stats[p.T * p.Hq + i * p.Hq + h] : 0.0f;
    }
    dev::cp_async_wait_all();
    __syncthreads();
    if (i0 + QT - 1 < jw) continue;                          // rows before the warp's keys
    if (p.window > 0 && i0 >= jw + 15 + p.window) continue;  // past its keys' windows
    float s[QT / 8][4], dp[QT / 8][4];                       // S^T and dP^T: the warp's 16 keys x QT rows
    zero_acc(s);
    zero_acc(dp);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4], va[4];
      a_frag(ka, Ks, P, warp * 16, kk * 16, lane);
      a_frag(va, Vs, P, warp * 16, kk * 16, lane);
#pragma unroll
      for (int n = 0; n < QT / 8; n += 2) {
        uint32_t b[4];
        b_pair(b, Qs, P, n, kk * 16, lane);
        dev::mma<KV>(s[n], ka, b[0], b[1]);
        dev::mma<KV>(s[n + 1], ka, b[2], b[3]);
        b_pair(b, dOs, P, n, kk * 16, lane);
        dev::mma<KV>(dp[n], va, b[0], b[1]);
        dev::mma<KV>(dp[n + 1], va, b[2], b[3]);
      }
    }
    // every key of the warp seen by every row of the tile (rows below T, at or after the last
    // key, the first key inside the last row's window): no element needs its mask
    if (plain && i0 >= jw + 15 && i0 + QT - 1 < p.T && (p.window <= 0 || i0 + QT - 1 - p.window < jw)) {
#pragma unroll
      for (int n = 0; n < QT / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = n * 8 + 2 * (lane & 3) + (e & 1);
          const float pv = __expf(s[n][e] * p.scale - st[c]);
          s[n][e] = pv;
          dp[n][e] = pv * (dp[n][e] - st[QT + c]) * p.scale;
        }
    } else {
#pragma unroll
      for (int n = 0; n < QT / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = n * 8 + 2 * (lane & 3) + (e & 1);
          const int64_t j = key_a + (e >> 1) * 8, i = i0 + c;
          float pv = 0.0f, ds = 0.0f;
          if (visible(p, i, j)) {
            const Logit lg = logit(p, s[n][e], slope, j);
            pv = __expf(lg.s - st[c]);
            ds = pv * (dp[n][e] - st[QT + c]) * lg.dl;
          }
          s[n][e] = pv;
          dp[n][e] = ds;
        }
    }
    dev::mma_c_bt<KV, QT, D>(dv, s, dOs, P, lane);   // dv += P^T dO
    dev::mma_c_bt<KV, QT, D>(dk, dp, Qs, P, lane);   // dk += dS^T q
  }
  const int64_t heads = rep == 1 ? p.Hkv : p.Hq, hh = rep == 1 ? g : h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = key_a + 8 * r;
    if (j >= p.T) continue;
    const int64_t o = (j * heads + hh) * D + 2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<float2*>(p.dk + o + n * 8) = make_float2(dk[n][2 * r], dk[n][2 * r + 1]);
      *reinterpret_cast<float2*>(p.dv + o + n * 8) = make_float2(dv[n][2 * r], dv[n][2 * r + 1]);
    }
  }
}

// dk[j, g, :] = sum over the group's query heads h (in order) of part[j, h, :]; likewise dv.
__global__ void sum_groups_kernel(const float* pk, const float* pv, int64_t T, int64_t Hkv, int64_t rep,
                                  int64_t D, float* dk, float* dv) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t n = T * Hkv * D;
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < n;
       x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = x % D, jg = x / D;  // jg = j * Hkv + g; head h = g * rep + u at j * Hkv * rep + h
    const float* a = pk + jg * rep * D + d;
    const float* b = pv + jg * rep * D + d;
    float sk = 0.0f, sv = 0.0f;
    for (int64_t u = 0; u < rep; ++u) sk += a[u * D], sv += b[u * D];
    dk[x] = sk;
    dv[x] = sv;
  }
}

template <class KV, int D>
void launch_tc(const Launch& l, const Params& p) {
  static std::atomic<bool> opted_dq[64], opted_dkv[64];
  const cudaStream_t s = as_stream(l.stream);
  auto kq = attn_bwd_dq_tc_kernel<KV, D>;
  opt_in_smem(kq, dq_smem_bytes<D>(), opted_dq);
  const unsigned tiles = unsigned(ceil_div(p.T, kTile));
  cuda::launch(kq, dim3(tiles, unsigned(p.Hq)), dim3(kWarps * 32), dq_smem_bytes<D>(), s, p);
  NIBBLE_CUDA_CHECK_LAUNCH();
  auto kkv = attn_bwd_dkv_tc_kernel<KV, D>;
  opt_in_smem(kkv, dkv_smem_bytes<D>(), opted_dkv);
  cuda::launch(kkv, dim3(tiles, unsigned(p.Hq)), dim3(kWarps * 32), dkv_smem_bytes<D>(), s, p);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

template <class KV>
void launch_d(const Launch& l, const Params& p, int64_t D) {
  with_tc_head_dim("cuda::attention_backward", D, [&](auto d) { launch_tc<KV, decltype(d)::value>(l, p); });
}

}  // namespace

bool attention_backward_tc_fits(const AttentionBackward& a) {
  const bool half = a.kv_dtype == DType::BF16 || a.kv_dtype == DType::F16;
  const bool dim = a.D == a.Dv && (attention_tc_head_dim(a.D));
  return attention_tc_enabled() && half && dim && aligned(a.k, 16) && aligned(a.v, 16) && aligned(a.q, 16) &&
         aligned(a.dout, 16);
}

size_t attention_backward_tc_partials_bytes(const AttentionBackward& a) {
  return a.Hq > a.Hkv ? size_t(2 * a.T * a.Hq * a.D) * sizeof(float) : 0;
}

void attention_backward_tc(const Launch& l, const AttentionBackward& a) {
  if (!attention_backward_tc_fits(a))
    throw InternalError(detail::str("cuda::attention_backward: 16-bit k/v with D=", a.D, " Dv=", a.Dv,
                                    " that the tensor-core kernels do not take"));
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0)
    throw ShapeError(
        detail::str("cuda::attention_backward: Hq ", a.Hq, " and Hkv ", a.Hkv, " not supported"));
  const size_t need = attention_backward_workspace_bytes(a);
  if (need > l.workspace_bytes || !l.workspace)
    throw InternalError(
        detail::str("cuda::attention_backward: workspace of ", l.workspace_bytes, " bytes, need ", need));
  DeviceScope ds(l.device);
  float* stats = static_cast<float*>(l.workspace);
  const int64_t rep = a.Hq / a.Hkv;
  float* part = stats + 2 * a.T * a.Hq;  // [2][T, Hq, D] when rep > 1
  const Params p{a.T,
                 a.Hq,
                 a.Hkv,
                 a.window,
                 a.scale,
                 a.softcap,
                 a.alibi,
                 a.q,
                 a.dout,
                 static_cast<const uint16_t*>(a.k),
                 static_cast<const uint16_t*>(a.v),
                 a.dq,
                 rep == 1 ? a.dk : part,
                 rep == 1 ? a.dv : part + a.T * a.Hq * a.D,
                 stats,
                 a.out,
                 a.out ? a.lse : nullptr};
  if (a.kv_dtype == DType::BF16)
    launch_d<dev::BF16>(l, p, a.D);
  else
    launch_d<dev::F16>(l, p, a.D);
  if (rep == 1) return;
  const int64_t n = a.T * a.Hkv * a.D;
  cuda::launch(sum_groups_kernel, dim3(unsigned(std::min<int64_t>(ceil_div(n, 256), 4096))), dim3(256), 0,
               as_stream(l.stream), static_cast<const float*>(p.dk), static_cast<const float*>(p.dv), a.T,
               a.Hkv, rep, a.D, a.dk, a.dv);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

}  // namespace nibble::cuda
