// Decode-shaped linear on the tensor cores (gemv_mma.h). One warp computes a 16-row tile of W
// against up to 16 rows of x over a slice of K with mma.m16n8k16 (f32 accumulation):
//
//   A (16 x 16, row-major) = W rows n0..n0+15      thread (g = lane/4, q = lane%4) holds rows
//   B (16 x 8,  col-major) = x rows 0..7 (8..15)     g and g+8 of A, x row g (g+8) of B
//   D (16 x 8)             = out^T tile            rows n0+g, n0+g+8; x rows 2q, 2q+1
//
// The mma's k order is free as long as A and B agree: thread q of a quad loads 16 bytes of
// its two W rows at window offset q * 16 bytes, i.e. 32 consecutive 4-bit codes (8 16-bit
// values), and feeds them to 8 (2) k-steps, 4 physical k a step; the B fragment takes x at the
// same 4 physical k. So a warp's loads are 4 x 16 B contiguous per row, and W streams once.
//
//   4-bit: byte j of the load holds codes k = 2j (high nibble) and 2j+1 (low nibble); step s
//          uses bytes 2s, 2s+1 -> a0 = (k, k+1) of row g, a2 = (k+2, k+3), a1/a3 row g+8.
//          The 32 codes lie in one absmax block (blocksizes >= 32, K % 128 == 0), decoded once.
//   16-bit: words 2s, 2s+1 of the load are (k, k+1), (k+2, k+3): used as stored.
//
// Warps of a block split K (KS slices) over RG = 8 / KS row tiles; slices are summed in a fixed
// order through shared memory, so results are deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "backends/cuda/check.h"
#include "backends/cuda/compute_dtype.cuh"
#include "backends/cuda/gemv_frag.cuh"
#include "backends/cuda/gemv_mma.h"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/quant_device.cuh"

namespace nibble::cuda {
namespace {

using dev::ld_stream;
using dev::load_bias;
using dev::mma;
using dev::pack2;
using dev::round_ct;
using dev::x_frag;

constexpr int kWarps = 8;
constexpr int kUnroll = 4;  // 16-byte W loads in flight per row per thread

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

struct Args {
  const float* x;
  int M;
  int64_t K, N;
  const void* w;  // packed 4-bit codes, or 16-bit W
  // 4-bit state
  const float* absmax;  // plain, or nullptr when nested
  const uint8_t* absmax_q;
  const float* absmax2;
  const float* code2;
  const float* quant_map;
  float offset;
  int bs_log2;
  int nbs_log2;  // nested blocksize as a shift, -1 when not a power of two
  int64_t nested_bs;
  // output
  const void* bias;
  int bdt;
  float* out;
  int ks;  // K slices per row tile (1, 2, 4, 8)
};

// U consecutive 16-byte loads of the thread's two W rows (and their absmax for 4-bit).
template <int U>
struct Stage {
  uint4 wa[U], wb[U];
  float ama[U], amb[U];
};

// FOUR: 4-bit codes (32 a load) or 16-bit W (8 a load). NT: x tiles of 8 rows (1 or 2).
// U: loads a row per stage, all issued before the stage's math. (Measured on an H100: issuing the
// next stage's loads before this stage's math, or staging x in shared memory, gained nothing.)
// SPLIT (bf16 W, f32 x and result): x = hi + mid + lo exactly in three bf16 terms, three mma
// per k-step, so the products are exact and only the f32 summation order differs.
template <bool FOUR, int NT, class CT, int U, bool SPLIT = false>
__global__ void __launch_bounds__(kWarps * 32, 2) gemv_mma_kernel(Args a) {
  constexpr int kVals = FOUR ? 32 : 8;  // values per 16-byte load
  constexpr int kSteps = kVals / 4;     // mma k-steps per load
  constexpr int64_t kWin = 4 * kVals;   // k covered by a quad's loads
  __shared__ float lut[16];
  __shared__ float code2[256];
  __shared__ float red[kWarps][32][4 * NT];
  const int tid = threadIdx.x;
  if constexpr (FOUR) {
    if (tid < 16) lut[tid] = a.quant_map[tid];
    if (!a.absmax) code2[tid] = a.code2[tid];  // blockDim == 256
  }
  __syncthreads();

  const int warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int RG = kWarps / a.ks;
  const int rt = warp % RG, ks = warp / RG;
  const int64_t n0 = (int64_t(blockIdx.x) * RG + rt) * 16;
  const int64_t N = a.N, K = a.K;
  const int64_t ra = min(n0 + g, N - 1), rb = min(n0 + g + 8, N - 1);  // clamped: rows >= N unused
  const int64_t iters = K / kWin;
  const int64_t i0 = iters * ks / a.ks, i1 = iters * (ks + 1) / a.ks;
  const bool live0 = g < a.M, live1 = g + 8 < a.M;
  const char* wbase = static_cast<const char*>(a.w);
  constexpr int kElemBytesNum = FOUR ? 1 : 2, kElemBytesDen = FOUR ? 2 : 1;  // bytes per element

  float d[NT][4] = {};
  auto load = [&](Stage<U>& st, int64_t it) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (it + u >= i1) break;
      const int64_t k = (it + u) * kWin + q * kVals;
      const int64_t ea = ra * K + k, eb = rb * K + k;  // flat element index
      st.wa[u] = ld_stream(wbase + ea * kElemBytesNum / kElemBytesDen);
      st.wb[u] = ld_stream(wbase + eb * kElemBytesNum / kElemBytesDen);
      if constexpr (FOUR) {
        const int64_t ba = ea >> a.bs_log2, bb = eb >> a.bs_log2;
        if (a.absmax) {
          st.ama[u] = __ldg(a.absmax + ba);
          st.amb[u] = __ldg(a.absmax + bb);
        } else {
          const int64_t na = a.nbs_log2 >= 0 ? ba >> a.nbs_log2 : ba / a.nested_bs;
          const int64_t nb = a.nbs_log2 >= 0 ? bb >> a.nbs_log2 : bb / a.nested_bs;
          st.ama[u] = dev::mul_ftz(code2[__ldg(a.absmax_q + ba)], __ldg(a.absmax2 + na)) + a.offset;
          st.amb[u] = dev::mul_ftz(code2[__ldg(a.absmax_q + bb)], __ldg(a.absmax2 + nb)) + a.offset;
        }
      }
    }
  };
  auto compute = [&](const Stage<U>& st, int64_t it) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (it + u >= i1) break;
      const int64_t kq = (it + u) * kWin + q * kVals;
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        uint32_t af[4];
        if constexpr (FOUR) {
          // bytes j, j + 1 (j = 2 (s % 2)) of word s / 2. Each nibble times 4 (a byte offset into
          // lut) sits in its own byte of hi4 / lo4, so a code costs one byte select.
          const int j = 2 * (s % 2);  // a constant once the loop is unrolled
          const uint32_t wa = word(st.wa[u], s / 2), wb = word(st.wb[u], s / 2);
          const uint32_t hia = (wa >> 2) & 0x3c3c3c3cu, loa = (wa << 2) & 0x3c3c3c3cu;
          const uint32_t hib = (wb >> 2) & 0x3c3c3c3cu, lob = (wb << 2) & 0x3c3c3c3cu;
          const char* lb = reinterpret_cast<const char*>(lut);
          auto T = [&](uint32_t v, int byte, float am) {
            const uint32_t off = __byte_perm(v, 0u, 0x4440u | unsigned(byte));
            return dev::mul_ftz(*reinterpret_cast<const float*>(lb + off), am);
          };
          const float A = st.ama[u], B = st.amb[u];
          af[0] = pack2<CT>(T(hia, j, A), T(loa, j, A));
          af[2] = pack2<CT>(T(hia, j + 1, A), T(loa, j + 1, A));
          af[1] = pack2<CT>(T(hib, j, B), T(lob, j, B));
          af[3] = pack2<CT>(T(hib, j + 1, B), T(lob, j + 1, B));
        } else {
          af[0] = word(st.wa[u], 2 * s);
          af[2] = word(st.wa[u], 2 * s + 1);
          af[1] = word(st.wb[u], 2 * s);
          af[3] = word(st.wb[u], 2 * s + 1);
        }
        const int64_t kp = kq + 4 * s;
        uint32_t b0, b1;
        if constexpr (SPLIT) {
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            const bool live = t == 0 ? live0 : live1;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (live) v = __ldg(reinterpret_cast<const float4*>(a.x + (g + 8 * t) * K + kp));
            float r[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int term = 0; term < 3; ++term) {
              float h[4];
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                h[e] = round_ct<dev::BF16>(r[e]);
                r[e] = r[e] - h[e];  // exact: the remainder of a round-to-nearest
              }
              mma<dev::BF16>(d[t], af, pack2<dev::BF16>(h[0], h[1]), pack2<dev::BF16>(h[2], h[3]));
            }
          }
        } else {
          x_frag<CT>(a.x, K, live0, g, kp, b0, b1);
          mma<CT>(d[0], af, b0, b1);
          if constexpr (NT == 2) {
            x_frag<CT>(a.x, K, live1, g + 8, kp, b0, b1);
            mma<CT>(d[NT - 1], af, b0, b1);
          }
        }
      }
    }
  };
  for (int64_t it = i0; it < i1; it += U) {
    Stage<U> st;
    load(st, it);
    compute(st, it);
  }

  // sum the K slices of each row tile in slice order
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) red[warp][lane][4 * t + j] = d[t][j];
  __syncthreads();
  if (ks != 0) return;
  for (int s = 1; s < a.ks; ++s)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j = 0; j < 4; ++j) d[t][j] += red[rt + s * RG][lane][4 * t + j];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + g + (j >= 2 ? 8 : 0);
      const int m = 8 * t + 2 * q + (j & 1);
      if (n >= N || m >= a.M) continue;
      float v = d[t][j];
      if constexpr (SPLIT) {  // f32 result: nothing rounded
        if (a.bias) v += load_bias(a.bias, a.bdt, n);
        a.out[int64_t(m) * N + n] = v;
      } else {
        if (a.bias) v += round_ct<CT>(load_bias(a.bias, a.bdt, n));
        a.out[int64_t(m) * N + n] = round_ct<CT>(v);
      }
    }
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// K slices per 16-row tile: enough warps to keep HBM busy, at least 2 loads per slice.
int pick_slices(int64_t N, int64_t iters) {
  const int64_t tiles = (N + 15) / 16;
  int ks = 1;
  while (ks < kWarps && tiles * ks < 4096 && iters >= 4 * ks) ks *= 2;
  return ks;
}

template <bool FOUR>
void launch(const Launch& l, Args a, DType ct, bool split = false) {
  const int64_t win = FOUR ? 128 : 32;
  a.ks = pick_slices(a.N, a.K / win);
  const int rg = kWarps / a.ks;
  const dim3 grid(unsigned((a.N + 16 * rg - 1) / (16 * rg)));
  auto go = [&](auto nt, auto ctag) {
    constexpr int kNt = decltype(nt)::value;
    using C = decltype(ctag);
    if constexpr (!FOUR && std::is_same_v<C, dev::BF16>) {
      if (split) {
        gemv_mma_kernel<false, kNt, C, kUnroll, true><<<grid, kWarps * 32, 0, l.stream>>>(a);
        return;
      }
    }
    gemv_mma_kernel<FOUR, kNt, C, kUnroll><<<grid, kWarps * 32, 0, l.stream>>>(a);
  };
  if (ct == DType::BF16) {
    if (a.M <= 8)
      go(std::integral_constant<int, 1>{}, dev::BF16{});
    else
      go(std::integral_constant<int, 2>{}, dev::BF16{});
  } else {
    if (a.M <= 8)
      go(std::integral_constant<int, 1>{}, dev::F16{});
    else
      go(std::integral_constant<int, 2>{}, dev::F16{});
  }
  NIBBLE_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool gemv_mma_4bit_ok(int64_t M, int64_t K, const Quant4Weight& w, DType ct, const float* x) {
  return M >= 1 && M <= 16 && K % 128 == 0 && (ct == DType::BF16 || ct == DType::F16) && w.blocksize >= 32 &&
         aligned16(w.packed) && aligned16(x);
}

bool gemv_mma_fp_ok(int64_t M, int64_t K, const void* w, DType wdt, DType round_to, const float* x) {
  const bool dtypes = ((wdt == DType::BF16 || wdt == DType::F16) && round_to == wdt) ||
                      (wdt == DType::BF16 && round_to == DType::F32);  // the split-x form
  return M >= 1 && M <= 16 && K % 32 == 0 && dtypes && aligned16(w) && aligned16(x);
}

void gemv_mma_4bit(const Launch& l, const float* x, int64_t M, int64_t K, const Quant4Weight& w, int64_t N,
                   const void* bias, int bias_code, DType ct, float* out) {
  Args a{};
  a.x = x, a.M = int(M), a.K = K, a.N = N, a.w = w.packed;
  a.absmax = w.absmax, a.absmax_q = w.absmax_q, a.absmax2 = w.absmax2, a.code2 = w.code2;
  a.quant_map = w.quant_map, a.offset = w.offset, a.nested_bs = w.nested_blocksize;
  while ((int64_t(1) << a.bs_log2) < w.blocksize) ++a.bs_log2;
  a.nbs_log2 = -1;
  if (w.nested_blocksize > 0 && (w.nested_blocksize & (w.nested_blocksize - 1)) == 0) {
    a.nbs_log2 = 0;
    while ((int64_t(1) << a.nbs_log2) < w.nested_blocksize) ++a.nbs_log2;
  }
  a.bias = bias, a.bdt = bias_code, a.out = out;
  launch<true>(l, a, ct);
}

void gemv_mma_fp(const Launch& l, const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N,
                 const void* bias, int bias_code, DType round_to, float* out) {
  Args a{};
  a.x = x, a.M = int(M), a.K = K, a.N = N, a.w = w;
  a.bias = bias, a.bdt = bias_code, a.out = out;
  launch<false>(l, a, wdt, round_to == DType::F32);
}

}  // namespace nibble::cuda
