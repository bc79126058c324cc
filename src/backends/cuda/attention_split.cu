// Causal attention over a KV cache (nn_cuda.h). Prefill over a 16-bit cache: tensor cores where the
// shape fits (attention_tc.cu). Other prefill (32 or more query rows): a tiled kernel
// whose key/value tiles in shared memory serve a block's rows. Otherwise flash-decoding style: the key range
// [0, S) is cut into n_split chunks; block (split, i * Hq + h) runs an online softmax of query row i, head h
// over its chunk (a warp scores 8 keys at a time, 4 when D > 128, their K and V rows loaded together;
// lane l holds head dims 4 l .. 4 l + 3, or 8 l .. 8 l + 7 when D > 128, so D <= 256 and a lane
// loads its part of a K/V row with one or two vector loads where the cache's layout allows), the
// block's warps merge their partials in shared memory, and a combine pass merges the splits
// (partials in the workspace). With one split the block writes the output
// directly. Math in f32, as the CPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>

#include "backends/cuda/attention_tc.h"
#include "backends/cuda/check.h"
#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/nn_cuda.h"
#include "backends/cuda/pdl.cuh"
#include "backends/cuda/runtime.h"

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
  const int64_t* pos_dev;   // decode position on the device, or nullptr
  const int64_t* kv_table;  // a batched decode step: row i's K and V caches (Attention::kv_table)
};

// Elements d0 .. d0 + N - 1 of a K or V row starting at element `base` of p, as floats. kVec:
// vector loads (N 16-bit elements: 8 or 16 bytes; N floats: 16-byte loads), for which base, d0
// and n are multiples of N, d0 < n (a lane past the head reads its first run instead: the caller
// ignores it) and p is aligned to min(16, N elements) (runs_vec); else one element at a time,
// zeros past n.
template <class KV, int N, bool kVec>
__device__ __forceinline__ void load_run(const void* p, int64_t base, int64_t d0, int64_t n,
                                         float (&out)[N]) {
  if constexpr (kVec) {
    if constexpr (KV::kBytes == 4) {
      const float4* s = reinterpret_cast<const float4*>(static_cast<const float*>(p) + base + d0);
#pragma unroll
      for (int c = 0; c < N / 4; ++c) {
        const float4 v = s[c];
        out[4 * c] = v.x, out[4 * c + 1] = v.y, out[4 * c + 2] = v.z, out[4 * c + 3] = v.w;
      }
    } else if constexpr (N == 4) {
      const uint2 w = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p) + base + d0);
      dev::unpack2<KV>(w.x, out[0], out[1]);
      dev::unpack2<KV>(w.y, out[2], out[3]);
    } else {
      const uint4* s = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p) + base + d0);
#pragma unroll
      for (int c = 0; c < N / 8; ++c) {
        const uint4 w = s[c];
        dev::unpack2<KV>(w.x, out[8 * c], out[8 * c + 1]);
        dev::unpack2<KV>(w.y, out[8 * c + 2], out[8 * c + 3]);
        dev::unpack2<KV>(w.z, out[8 * c + 4], out[8 * c + 5]);
        dev::unpack2<KV>(w.w, out[8 * c + 6], out[8 * c + 7]);
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = d0 + e < n ? dev::load1<KV>(p, base + d0 + e) : 0.0f;
  }
}

// A warp's keys of [lo, hi) (kKeys at a time from lo + warp * kKeys) into its online softmax
// (m, l, acc over dims d0 ..); kVec: K and V runs take vector loads (runs_vec).
template <class KV, int kKeys, int kE, bool kVec>
__device__ __forceinline__ void score_keys(const Params& p, int64_t lo, int64_t hi, int warp, int64_t d0,
                                           int64_t g, const float (&q)[kE], float slope, float& m, float& l,
                                           float (&acc)[kE]) {
  // vector loads: a lane past the head dims reads dims 0 .. kE - 1 (its q is 0, its acc unused)
  const int64_t dk = kVec && d0 >= p.D ? 0 : d0, dv = kVec && d0 >= p.Dv ? 0 : d0;
  // kKeys keys a warp at a time (their K and V rows loaded together, so a warp has that many rows
  // in flight), one online-softmax update for them; key j0 + u of the group, u < kKeys
  for (int64_t j0 = lo + warp * kKeys; j0 < hi; j0 += kWarps * kKeys) {
    float kr[kKeys][kE], vr[kKeys][kE];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      const int64_t j = j0 + u < hi ? j0 + u : j0;  // past hi: key j0 again, weighted 0 below
      load_run<KV, kE, kVec>(p.k, j * p.ldk + g * p.D, dk, p.D, kr[u]);
      load_run<KV, kE, kVec>(p.v, j * p.ldv + g * p.Dv, dv, p.Dv, vr[u]);
    }
    float s[kKeys];
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      s[u] = 0.0f;
#pragma unroll
      for (int e = 0; e < kE; ++e) s[u] += q[e] * kr[u][e];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int u = 0; u < kKeys; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
    float mn = m;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      s[u] *= p.scale;
      if (p.softcap > 0.0f) s[u] = p.softcap * tanhf(s[u] / p.softcap);
      if (p.alibi) s[u] += slope * float(j0 + u);
      if (j0 + u >= hi) s[u] = -INFINITY;
      mn = fmaxf(mn, s[u]);
    }
    const float corr = expf(m - mn);  // key j0 is in range, so mn is finite
    float e_s[kKeys], e_sum = 0.0f;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) e_s[u] = expf(s[u] - mn), e_sum += e_s[u];
    l = l * corr + e_sum;
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      float pv = 0.0f;
#pragma unroll
      for (int u = 0; u < kKeys; ++u) pv += e_s[u] * vr[u][e];
      acc[e] = acc[e] * corr + pv;
    }
    m = mn;
  }
}

// kKeys: keys a warp scores at once; kE: head-dim elements a lane (D, Dv <= 32 * kE), dims
// kE * lane .. kE * lane + kE - 1, so a lane's part of a K or V row is one run of loads; kVec:
// those runs take vector loads (runs_vec).
template <class KV, int kKeys, int kE, bool kVec>
__global__ void __launch_bounds__(kWarps * 32) attn_split_kernel(Params p) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  __shared__ float sm[kWarps], sl[kWarps], sacc[kWarps][32 * kE];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t split = blockIdx.x, row = blockIdx.y, i = row / p.Hq, h = row % p.Hq;
  const bool batched = p.kv_table != nullptr;  // row i: sequence i at position pos_dev[i]
  const int64_t q_offset = batched ? p.pos_dev[i] : p.pos_dev ? *p.pos_dev : p.q_offset;
  const int64_t S = p.pos_dev ? q_offset + 1 : p.S;
  const int64_t g = h / (p.Hq / p.Hkv), pos = batched ? q_offset : q_offset + i;
  if (batched) {
    p.k = reinterpret_cast<const void*>(p.kv_table[i]);
    p.v = reinterpret_cast<const void*>(p.kv_table[p.T + i]);
  }
  // the split's keys: chunks of p.chunk; in the many-key forms with the position on the device (a
  // graph replayed at every step: p.chunk sized for the cache's capacity), ceil(S / n_split) of
  // this step's S but at least a block's group of keys, so the keys spread over the splits however
  // far the cache is filled and no split is mostly masked duplicates
  const int64_t chunk =
      kKeys > 1 && p.pos_dev ? max((S + p.n_split - 1) / p.n_split, int64_t(kWarps * kKeys)) : p.chunk;
  int64_t lo = split * chunk, hi = lo + chunk < S ? lo + chunk : S;
  if (hi > pos + 1) hi = pos + 1;
  if (p.window > 0 && lo < pos - p.window + 1) lo = pos - p.window + 1;
  float q[kE], acc[kE];
  const int64_t d0 = int64_t(lane) * kE;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const int64_t d = d0 + e;
    q[e] = d < p.D ? p.q[i * p.ldq + h * p.D + d] : 0.0f;
    acc[e] = 0.0f;
  }
  const float slope = p.alibi ? p.alibi[h] : 0.0f;
  float m = -INFINITY, l = 0.0f;
  score_keys<KV, kKeys, kE, kVec>(p, lo, hi, warp, d0, g, q, slope, m, l, acc);
  // merge the warps
  if (lane == 0) sm[warp] = m, sl[warp] = l;
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  const float f = m == -INFINITY ? 0.0f : expf(m - M);
#pragma unroll
  for (int e = 0; e < kE; ++e) sacc[warp][d0 + e] = acc[e] * f;
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

// Prefill (many query rows): block (row tile, head) of kPrefillWarps query rows, one a warp,
// walks the keys in tiles of 32 staged in shared memory as f32 (K rows padded to D + 4 floats so
// lane j's row reads are conflict-free), shared by the block's rows. Lane j scores key j (an
// f32 dot over D), the warp keeps an online softmax per row, and lanes own output dims for P.V.
// Same math as the split kernel (f32, expf); only the summation order differs.
constexpr int kPrefillWarps = 8;

template <class KV>
__global__ void __launch_bounds__(kPrefillWarps * 32) attn_prefill_kernel(Params p) {
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  extern __shared__ float sh[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t D = p.D, Dv = p.Dv, kld = D + 4;
  float* Ks = sh;                      // [32][D + 4]
  float* Vs = Ks + 32 * kld;           // [32][Dv]
  float* Qs = Vs + 32 * Dv;            // [warps][D]
  float* Ps = Qs + kPrefillWarps * D;  // [warps][32]
  const int64_t h = blockIdx.y, g = h / (p.Hq / p.Hkv);
  const int64_t r0 = int64_t(blockIdx.x) * kPrefillWarps, i = r0 + warp;
  const bool live = i < p.T;
  const int64_t pos = p.q_offset + i;
  // the block's keys: up to its last row's position, from its first row's window start
  const int64_t last = p.q_offset + min(p.T - 1, r0 + kPrefillWarps - 1);
  const int64_t hi = min(p.S, last + 1);
  int64_t lo = 0;
  if (p.window > 0) lo = max(int64_t(0), p.q_offset + r0 - p.window + 1);
  lo = lo / 32 * 32;
  for (int64_t d = lane; d < D; d += 32) Qs[warp * D + d] = live ? p.q[i * p.ldq + h * D + d] : 0.0f;
  const float slope = p.alibi ? p.alibi[h] : 0.0f;
  float m = -INFINITY, l = 0.0f, acc[kMaxE];
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) acc[e] = 0.0f;
  for (int64_t j0 = lo; j0 < hi; j0 += 32) {
    __syncthreads();                                  // the previous tile is consumed (and Qs written)
    for (int r = warp; r < 32; r += kPrefillWarps) {  // a warp a key row, lanes over d
      const int64_t j = j0 + r;
      for (int64_t d = lane; d < D; d += 32)
        Ks[r * kld + d] = j < hi ? dev::load1<KV>(p.k, j * p.ldk + g * D + d) : 0.0f;
      for (int64_t d = lane; d < Dv; d += 32)
        Vs[r * Dv + d] = j < hi ? dev::load1<KV>(p.v, j * p.ldv + g * Dv + d) : 0.0f;
    }
    __syncthreads();
    const int64_t j = j0 + lane;
    const bool valid = live && j < hi && j <= pos && (p.window <= 0 || j > pos - p.window);
    float s = -INFINITY;
    if (valid) {
      const float* qr = Qs + warp * D;
      const float* kr = Ks + lane * kld;
      float dot = 0.0f;
      if (D % 4 == 0) {  // 16-byte shared loads: the row pitch D + 4 keeps them aligned
        for (int64_t d = 0; d < D; d += 4) {
          const float4 a4 = *reinterpret_cast<const float4*>(qr + d),
                       b4 = *reinterpret_cast<const float4*>(kr + d);
          dot += a4.x * b4.x;
          dot += a4.y * b4.y;
          dot += a4.z * b4.z;
          dot += a4.w * b4.w;
        }
      } else {
        for (int64_t d = 0; d < D; ++d) dot += qr[d] * kr[d];
      }
      s = dot * p.scale;
      if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
      if (p.alibi) s += slope * float(j);
    }
    float tmax = s;
    for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
    if (tmax == -INFINITY) continue;  // no key of this tile is visible to this row
    const float mn = fmaxf(m, tmax), corr = expf(m - mn);
    const float pj = valid ? expf(s - mn) : 0.0f;
    float psum = pj;
    for (int o = 16; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
    l = l * corr + psum;
    Ps[warp * 32 + lane] = pj;
    __syncwarp();
#pragma unroll
    for (int e = 0; e < kMaxE; ++e) acc[e] *= corr;
    for (int jj = 0; jj < 32; ++jj) {
      const float pw = Ps[warp * 32 + jj];
#pragma unroll
      for (int e = 0; e < kMaxE; ++e) {
        const int64_t d = lane + 32 * e;
        if (d < Dv) acc[e] += pw * Vs[jj * Dv + d];
      }
    }
    m = mn;
    __syncwarp();
  }
  if (!live) return;
#pragma unroll
  for (int e = 0; e < kMaxE; ++e) {
    const int64_t d = lane + 32 * e;
    if (d < Dv) p.out[(i * p.Hq + h) * Dv + d] = l > 0.0f ? acc[e] / l : 0.0f;
  }
}

size_t prefill_smem_bytes(const Attention& a) {
  return size_t(32 * (a.D + 4) + 32 * a.Dv + kPrefillWarps * a.D + kPrefillWarps * 32) * sizeof(float);
}

// The tiled prefill kernel takes many-row calls whose tiles fit the default 48 KB.
bool use_prefill(const Attention& a) {
  return a.T >= 32 && !a.pos && prefill_smem_bytes(a) <= size_t(48) << 10;
}

// One block per (i, h): merges the n_split partials of that row. The splits' maxima and sums
// are read once, in parallel, into shared memory (dynamic: 2 * n_split floats) and each thread
// then issues its n_split partial loads independently; the sums run in split order as before.
__global__ void attn_combine_kernel(const float* part, int n_split, int64_t Dv, float* out) {
  extern __shared__ float ml[];  // [n_split] maxima, then [n_split] weights exp(m_s - M)
  dev::pdl_launch_dependents();
  dev::pdl_wait();
  const int64_t row = blockIdx.x;
  const float* pr = part + row * n_split * (Dv + 2);
  for (int s = threadIdx.x; s < n_split; s += blockDim.x) ml[s] = pr[s * (Dv + 2) + Dv];
  __syncthreads();
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, ml[s]);
  __syncthreads();
  for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
    const float ms = ml[s];
    ml[n_split + s] = ms != -INFINITY ? expf(ms - M) : 0.0f;
    ml[s] = ms != -INFINITY ? pr[s * (Dv + 2) + Dv + 1] : 0.0f;  // the split's sum
  }
  __syncthreads();
  const float* e = ml + n_split;
  float L = 0.0f;
  for (int s = 0; s < n_split; ++s) L += ml[s] * e[s];
  for (int64_t d = threadIdx.x; d < Dv; d += blockDim.x) {
    float a = 0.0f;
#pragma unroll 8
    for (int s = 0; s < n_split; ++s) {
      const float p = pr[s * (Dv + 2) + d];
      if (e[s] != 0.0f) a += p * e[s];
    }
    out[row * Dv + d] = L > 0.0f ? a / L : 0.0f;
  }
}

// A positive integer from the environment variable `name` (benchmark knobs), else `fallback`.
int64_t env_knob(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  const int64_t n = v ? std::atoll(v) : 0;
  return n > 0 ? n : fallback;
}

// At least 8 keys a split, 2 a warp (7B decode on an H100, B=1 context 128: 16 -> 8 keys 303 ->
// 308 tok/s, 4 keys 304); NIBBLE_ATTN_SPLIT_KEYS (benchmarks) overrides it.
int64_t min_split_keys() {
  static const int64_t k = env_knob("NIBBLE_ATTN_SPLIT_KEYS", 8);
  return k;
}

// Split blocks aimed at a multiprocessor: 8 (B=1 context 4096: 8 -> 32 -> 64 a multiprocessor
// 181 -> 157 -> 139 tok/s); NIBBLE_ATTN_BLOCKS_PER_SM overrides it (benchmarks).
int64_t blocks_per_sm() {
  static const int64_t n = env_knob("NIBBLE_ATTN_BLOCKS_PER_SM", 8);
  return n;
}

// Keys a warp of the split kernel scores at once: 8 for head dims up to 128, else 4 (7B decode on
// an H100 against one key a warp: B=1 context 4096 182 -> 242 tok/s, B=16 context 4096 329 -> 746,
// B=16 context 128 1531 -> 1774, B=1 context 128 305 -> 312); NIBBLE_ATTN_KEYS=1 or 4
// (benchmarks) sets it.
int keys_at_once() {
  static const int k = [] {
    const int64_t n = env_knob("NIBBLE_ATTN_KEYS", 8);
    return n == 1 || n == 4 ? int(n) : 8;
  }();
  return k;
}

// Splits: about blocks_per_sm() blocks a multiprocessor, and splits of at most kMaxSplitKeys
// keys whatever the row count (measured when a warp walked its keys one at a time: 7B decode, 16
// sequences at context 4096 on an H100: 3 splits of 1365 keys 290 tok/s, 9 of 455 keys 392, 16 of
// 256 keys 375; not re-tuned for the many-key kernel), at least min_split_keys() keys each.
constexpr int64_t kMaxSplitKeys = 512;

int n_splits(const Attention& a) {
  const int64_t rows = a.T * a.Hq;
  const int64_t want = std::max(ceil_div(blocks_per_sm() * int64_t(sm_count()), std::max<int64_t>(rows, 1)),
                                ceil_div(a.S, kMaxSplitKeys));
  return int(std::clamp<int64_t>(want, 1, std::max<int64_t>(ceil_div(a.S, min_split_keys()), 1)));
}

// Whether a's K and V rows take the split kernel's vector loads of runs of N elements: head dims
// and row pitches multiples of N, and the caches aligned to min(16, N elements) (a K/V table's
// addresses are, nn_cuda.h).
template <class KV, int N>
bool runs_vec(const Attention& a) {
  constexpr uintptr_t kAlign = N * KV::kBytes < 16 ? N * KV::kBytes : 16;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlign == 0; };
  return a.D % N == 0 && a.Dv % N == 0 && a.ldk % N == 0 && a.ldv % N == 0 &&
         (a.kv_table || (aligned(a.k) && aligned(a.v)));
}

template <class KV, int kKeys, int kE>
void launch_split(const Attention& a, const dim3& grid, cudaStream_t st, const Params& p) {
  const dim3 block(kWarps * 32);
  if (runs_vec<KV, kE>(a))
    cuda::launch(attn_split_kernel<KV, kKeys, kE, true>, grid, block, 0, st, p);
  else
    cuda::launch(attn_split_kernel<KV, kKeys, kE, false>, grid, block, 0, st, p);
}

void check(const Attention& a) {
  if (a.D > 32 * kMaxE || a.Dv > 32 * kMaxE || a.D <= 0 || a.Dv <= 0)
    throw UnsupportedError(
        detail::str("cuda::attention: head dims D=", a.D, " Dv=", a.Dv, " (at most ", 32 * kMaxE, ")"));
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0)
    throw ShapeError(detail::str("cuda::attention: Hq=", a.Hq, " is not a multiple of Hkv=", a.Hkv));
  if (a.pos && a.T != 1 && !a.kv_table)
    throw ShapeError(
        detail::str("cuda::attention: a position on the device needs one query row, got T=", a.T));
  if (a.kv_table && !a.pos)
    throw ShapeError("cuda::attention: a K/V table needs the positions on the device");
}

}  // namespace

size_t attention_workspace_bytes(const Attention& a) {
  if (use_prefill(a) || attention_prefill_tc_fits(a)) return 0;
  const int ns = n_splits(a);
  return ns == 1 ? 0 : size_t(a.T * a.Hq) * size_t(ns) * size_t(a.Dv + 2) * sizeof(float);
}

bool attention_writes_lse(const Attention& a) {
  return a.lse && a.T > 0 && a.Hq > 0 && attention_prefill_tc_fits(a);
}

void attention(const Launch& l, const Attention& a) {
  if (a.T == 0 || a.Hq == 0) return;
  check(a);
  int prev = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(l.device));
  if (attention_prefill_tc_fits(a)) {  // 16-bit caches: tensor cores (attention_tc.cu)
    attention_prefill_tc(l, a);
    if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(prev));
    return;
  }
  if (use_prefill(a)) {
    Params p{a.T,     a.S,       a.Hq,    a.Hkv, a.D, a.Dv, a.q_offset, a.window, a.ldq, a.ldk,   a.ldv,  0,
             a.scale, a.softcap, a.alibi, a.q,   a.k, a.v,  a.out,      nullptr,  1,     nullptr, nullptr};
    const dim3 grid(unsigned(ceil_div(a.T, kPrefillWarps)), unsigned(a.Hq));
    with_float_dtype("cuda::attention", a.kv_dtype, [&](auto KV) {
      cuda::launch(attn_prefill_kernel<decltype(KV)>, grid, dim3(kPrefillWarps * 32), prefill_smem_bytes(a),
                   as_stream(l.stream), p);
    });
    NIBBLE_CUDA_CHECK_LAUNCH();
    if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(prev));
    return;
  }
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
           ns,      a.pos,     a.kv_table};
  const dim3 grid(unsigned(ns), unsigned(a.T * a.Hq));
  with_float_dtype("cuda::attention", a.kv_dtype, [&](auto KV) {
    using T = decltype(KV);
    const int keys = keys_at_once();
    const cudaStream_t st = as_stream(l.stream);
    if (keys == 8 && std::max(a.D, a.Dv) <= 32 * kMaxE / 2)
      launch_split<T, 8, kMaxE / 2>(a, grid, st, p);
    else if (keys > 1)
      launch_split<T, 4, kMaxE>(a, grid, st, p);
    else
      launch_split<T, 1, kMaxE>(a, grid, st, p);
  });
  NIBBLE_CUDA_CHECK_LAUNCH();
  if (ns > 1) {
    cuda::launch(attn_combine_kernel, dim3(unsigned(a.T * a.Hq)), dim3(128), size_t(2 * ns) * sizeof(float),
                 as_stream(l.stream), p.part, ns, a.Dv, a.out);
    NIBBLE_CUDA_CHECK_LAUNCH();
  }
  if (prev != l.device) NIBBLE_CUDA_CHECK(cudaSetDevice(prev));
}

}  // namespace nibble::cuda
