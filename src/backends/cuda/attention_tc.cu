// Prefill attention on tensor cores (flash-attention 2 style, mma.m16n8k16 with f32 accumulation) for
// K/V caches in bf16 or f16: block (row tile, head) of kRows query rows, 16 a warp; the keys in tiles of
// kKeys, staged by cp.async into two shared buffers (the next tile loads while this one is used). Per
// tile a warp computes its 16 x kKeys scores S = Q K^T (Q rounded to the cache dtype once, kept in
// registers as A fragments), masks, scales, soft-caps and adds ALiBi as the SIMT kernels do (in f32),
// keeps an online softmax per row in base 2 (the logits times log2(e); each row's log-sum-exp is
// written when asked, for the training backward), and adds P V with P rounded to the cache dtype (as flash attention
// does in a 16-bit dtype). Rows are padded by 8 elements in shared memory so ldmatrix is conflict-free.
#include "backends/cuda/attention_tc.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>

#include "backends/cuda/check.h"
#include "backends/cuda/gemv_frag.cuh"
#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/mma_smem.cuh"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/runtime.h"

namespace nibble::cuda {
namespace {

using dev::a_frag;
using dev::b_pair;
using dev::cp_async16;
using dev::cp_async_commit;
using dev::cp_async_wait_all;
using dev::smem_addr;

constexpr int kWarps = 4;
constexpr int kRows = 16 * kWarps;  // query rows a block
constexpr int kKeys = 64;           // keys a tile
constexpr int kPad = 8;             // elements of padding a shared row
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

struct Params {
  int64_t T, S, Hq, Hkv, q_offset, window, ldq, ldk, ldv;
  float scale, softcap;
  const float* alibi;
  const float* q;
  const uint16_t* k;
  const uint16_t* v;
  float* out;  // [T, Hq, D]
  float* lse;  // [T, Hq] or nullptr
};

template <int D>
constexpr size_t smem_bytes() {
  return size_t(kRows + 4 * kKeys) * size_t(D + kPad) * 2;  // Q, then K and V in two buffers each
}

template <class KV, int D>
__global__ void __launch_bounds__(kWarps * 32) attn_prefill_tc_kernel(Params p) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  constexpr int P = D + kPad, kChunks = D / 8;  // row pitch (elements), 16-byte chunks a row
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* Qs = smem;                // [kRows][P]
  uint16_t* Ks = Qs + kRows * P;      // [2][kKeys][P]
  uint16_t* Vs = Ks + 2 * kKeys * P;  // [2][kKeys][P]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t h = blockIdx.y, g = h / (p.Hq / p.Hkv);
  const int64_t r0 = (int64_t(gridDim.x) - 1 - blockIdx.x) * kRows;  // the longest rows first
  const int64_t hi = min(p.S, p.q_offset + min(p.T - 1, r0 + kRows - 1) + 1);
  int64_t lo = p.window > 0 ? max(int64_t(0), p.q_offset + r0 - p.window + 1) : 0;
  lo = lo / kKeys * kKeys;
  const uint16_t* kg = p.k + g * D;
  const uint16_t* vg = p.v + g * D;
  auto load_kv = [&](int64_t j0, int b) {
    for (int c = tid; c < kKeys * kChunks; c += kWarps * 32) {
      const int r = c / kChunks, ch = c % kChunks;
      const int64_t j = j0 + r;
      const bool ok = j < hi;
      const int64_t jj = ok ? j : j0;
      cp_async16(smem_addr(Ks + (b * kKeys + r) * P + ch * 8), kg + jj * p.ldk + ch * 8, ok);
      cp_async16(smem_addr(Vs + (b * kKeys + r) * P + ch * 8), vg + jj * p.ldv + ch * 8, ok);
    }
    cp_async_commit();
  };
  if (lo < hi) load_kv(lo, 0);
  for (int c = tid; c < kRows * (D / 2); c += kWarps * 32) {  // Q in the cache dtype
    const int r = c / (D / 2), d = (c % (D / 2)) * 2;
    const int64_t i = r0 + r;
    float a = 0.0f, b = 0.0f;
    if (i < p.T) {
      const float* qp = p.q + i * p.ldq + h * D + d;
      a = qp[0], b = qp[1];
    }
    *reinterpret_cast<uint32_t*>(Qs + r * P + d) = dev::pack2<KV>(a, b);
  }
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    a_frag(qf[kk], Qs, P, warp * 16, kk * 16, lane);

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const int64_t row_a = r0 + warp * 16 + (lane >> 2);  // the thread's rows: row_a and row_a + 8
  const int64_t pos_a = p.q_offset + row_a;
  const float slope = p.alibi ? p.alibi[h] : 0.0f;
  const int64_t w_first = p.q_offset + r0 + warp * 16;                             // the warp's first position
  const int64_t w_hi = min(hi, p.q_offset + min(p.T - 1, r0 + warp * 16 + 15) + 1);  // its keys end
  const bool plain = p.softcap <= 0.0f && !p.alibi;
  const float scale2 = p.scale * kLog2e;
  int buf = 0;
  for (int64_t j0 = lo; j0 < hi; j0 += kKeys, buf ^= 1) {
    cp_async_wait_all();
    __syncthreads();  // tile j0 is in, and every warp is done with the other buffer
    if (j0 + kKeys < hi) load_kv(j0 + kKeys, buf ^ 1);
    if (j0 >= w_hi) continue;                                          // after the warp's last row
    if (p.window > 0 && j0 + kKeys <= w_first - p.window + 1) continue;  // before its first window
    const uint16_t* Kb = Ks + buf * kKeys * P;
    const uint16_t* Vb = Vs + buf * kKeys * P;
    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int n = 0; n < kKeys / 8; n += 2) {
        uint32_t b[4];
        b_pair(b, Kb, P, n, kk * 16, lane);
        dev::mma<KV>(s[n], qf[kk], b[0], b[1]);
        dev::mma<KV>(s[n + 1], qf[kk], b[2], b[3]);
      }
    }
    // Every key of the tile visible to every row of the warp: no mask (the common case). The
    // softmax runs in base 2: x = logit * log2(e), p = 2^(x - max) (= e^(logit - max)); with no
    // softcap or ALiBi the scale and log2(e) are one multiply.
    const bool full = j0 + kKeys <= w_first + 1 && j0 + kKeys <= hi &&
                      (p.window <= 0 || j0 > w_first + 15 - p.window) && r0 + warp * 16 + 15 < p.T;
    float tmax[2] = {-INFINITY, -INFINITY};
    if (full && plain) {
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[n][e] *= scale2;
          tmax[e >> 1] = fmaxf(tmax[e >> 1], s[n][e]);
        }
    } else {
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t j = j0 + n * 8 + 2 * (lane & 3) + (e & 1);
          float x = s[n][e] * p.scale;
          if (p.softcap > 0.0f) x = p.softcap * tanhf(x / p.softcap);
          if (p.alibi) x += slope * float(j);
          x *= kLog2e;
          if (!full) {
            const int64_t pos = pos_a + (e >> 1) * 8;
            const bool valid =
                row_a + (e >> 1) * 8 < p.T && j < hi && j <= pos && (p.window <= 0 || j > pos - p.window);
            if (!valid) x = -INFINITY;
          }
          s[n][e] = x;
          tmax[e >> 1] = fmaxf(tmax[e >> 1], x);
        }
      }
    }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
      const float mn = fmaxf(m[r], tmax[r]);
      corr[r] = mn == -INFINITY ? 1.0f : exp2f(m[r] - mn);
      m[r] = mn;
    }
    float ls[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = s[n][e];
        const float pv = x == -INFINITY ? 0.0f : exp2f(x - m[e >> 1]);
        s[n][e] = pv;
        ls[e >> 1] += pv;
      }
    }
    l[0] = l[0] * corr[0] + ls[0];
    l[1] = l[1] * corr[1] + ls[1];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= corr[0], o[n][1] *= corr[0];
      o[n][2] *= corr[1], o[n][3] *= corr[1];
    }
    dev::mma_c_bt<KV, kKeys, D>(o, s, Vb, P, lane);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = row_a + 8 * r;
    if (i >= p.T) continue;
    // the row's log-sum-exp of its logits (natural log; the training backward's statistics)
    if (p.lse && (lane & 3) == 0) p.lse[i * p.Hq + h] = l[r] > 0.0f ? m[r] * kLn2 + logf(l[r]) : 0.0f;
    float* orow = p.out + (i * p.Hq + h) * D + 2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<float2*>(orow + n * 8) =
          l[r] > 0.0f ? make_float2(o[n][2 * r] / l[r], o[n][2 * r + 1] / l[r]) : make_float2(0.0f, 0.0f);
  }
}

template <class KV, int D>
void launch_tc(const Launch& l, const Params& p) {
  static std::atomic<bool> opted[64];
  auto kernel = attn_prefill_tc_kernel<KV, D>;
  const size_t bytes = smem_bytes<D>();
  opt_in_smem(kernel, bytes, opted);
  const dim3 grid(unsigned(ceil_div(p.T, kRows)), unsigned(p.Hq));
  cuda::launch(kernel, grid, dim3(kWarps * 32), bytes, as_stream(l.stream), p);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

template <class KV>
void launch_d(const Launch& l, const Params& p, int64_t D) {
  with_tc_head_dim("cuda::attention", D, [&](auto d) { launch_tc<KV, decltype(d)::value>(l, p); });
}

}  // namespace

bool attention_tc_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("NIBBLE_ATTN_TC");
    return !(v && v[0] == '0');
  }();
  return on;
}

bool attention_prefill_tc_fits(const Attention& a) {
  const bool half = a.kv_dtype == DType::BF16 || a.kv_dtype == DType::F16;
  const bool dim = a.D == a.Dv && (attention_tc_head_dim(a.D));
  return attention_tc_enabled() && half && dim && a.T >= 16 && !a.pos && !a.kv_table && a.ldk % 8 == 0 && a.ldv % 8 == 0 &&
         aligned(a.k, 16) && aligned(a.v, 16);
}

void attention_prefill_tc(const Launch& l, const Attention& a) {
  const Params p{a.T,     a.S,       a.Hq,    a.Hkv, a.q_offset,
                 a.window, a.ldq,    a.ldk,   a.ldv, a.scale,
                 a.softcap, a.alibi, a.q,     static_cast<const uint16_t*>(a.k),
                 static_cast<const uint16_t*>(a.v), a.out, a.lse};
  if (a.kv_dtype == DType::BF16)
    launch_d<dev::BF16>(l, p, a.D);
  else
    launch_d<dev::F16>(l, p, a.D);
}

}  // namespace nibble::cuda
