// torch_mean.h — bit-exact CPU reproduction of `t.mean()` for a contiguous 1-D
// float32 tensor as computed by PyTorch (2.11) on an NVIDIA GPU.
//
// Why this exists
// ---------------
// bitsandbytes' double quantization stores `offset = absmax.mean()`, computed on
// CUDA in float32.  Float addition is not associative, so to reproduce that offset
// bit-for-bit on the CPU we must add the values in exactly the order the GPU
// reduction kernel does.  Neither a sequential sum nor numpy's pairwise sum does
// that, and sum/n differs from what torch does as well.
//
// What torch does (our description, from reading the 2.11 sources)
// ------------------------------------------------------------------
// * On CUDA, `mean` is a single reduction kernel (not sum followed by divide).
//   Its accumulator is float32; the last step multiplies the float32 total by
//   `factor = 1.0f / float(n)` (factor is a float32 computed on the host), i.e.
//   result = total * factor, not total / n.
// * Launch shape for one output reducing n contiguous elements (4 accumulators
//   per thread, 4-wide vector loads for float):
//     - if n >= 128 the kernel loads aligned float4 vectors ("vectorised input")
//       and sizes the block from n/4; otherwise it loads single elements and
//       sizes the block from n.
//     - block width bw = largest power of two <= that size, capped at 512;
//       block height is 1 (a single output).
//     - vpt = ceil(n / bw)  (note: counted in elements even when vectorised).
//     - if vpt >= 256 the input is also split across `ctas` thread blocks:
//       ctas = max(min(num_sms * (2048 / bw), ceil(vpt/16)), ceil(vpt/256)),
//       with 2048 = max resident threads per SM on H100 (sm_90).
//     - n < 2^31 / 4 so that torch uses one launch with 32-bit indexing.
// * Per thread, vectorised path: global thread g = cta*bw + lane visits float4
//   vectors g, g + bw*ctas, g + 2*bw*ctas, ... (only whole vectors); element j
//   of each vector goes to accumulator j.  The n%4 leftover elements at the end
//   are added to accumulator 0 of lanes 0..(n%4 - 1) of block 0.  The thread's
//   value is then ((a0 + a1) + a2) + a3.
// * Per thread, scalar path (n < 128, single block): lane l visits l, l+bw,
//   l+2bw, ...; the i-th element of each group of four strides goes to
//   accumulator i, then ((a0 + a1) + a2) + a3.  (With bw = last_pow2(n) a lane
//   sees at most two elements.)
// * Within a block: if bw > 32, a shared-memory halving tree
//   v[i] += v[i + off] for off = bw/2, bw/4, ..., 32; then a warp shuffle-down
//   tree with DECREASING offsets min(bw,32)/2, ..., 2, 1 (v[i] += v[i + off]).
//   Lane 0 ends up with the block total.  (Upstream CUDA builds use decreasing
//   offsets; ROCm and fbcode builds use increasing ones — not reproduced here.)
// * Across blocks (ctas > 1): the block totals are staged; lane t of the last
//   block sums totals t, t+bw, t+2bw, ... sequentially starting from 0, and
//   then the same in-block tree as above produces the final total.
// * Accumulators start at 0.0f (the identity); 0 + x == x exactly.
//
// Assumptions / limits
// --------------------
// * The CUDA tensor's data pointer is 16-byte aligned (true for any fresh
//   allocation from the caching allocator).  A misaligned view would shift
//   which elements form each vector; that case is not modelled.
// * Device: upstream (non-ROCm, non-fbcode) torch build, 2048 max threads per
//   SM, `num_sms` multiprocessors (132 on H100 SXM).  Only the multi-block
//   split (n >= 130561) depends on num_sms; smaller n is device independent.
// * Validated bit-exactly against real torch output only for n in 1..600
//   (bitsandbytes fixture data); the multi-block path follows the source.
// * Only plain float adds and one multiply are used, so `-ffp-contract=off`
//   (or any contraction setting) cannot change the result; do not compile
//   with -ffast-math (it would allow reassociation).
// * n == 0 returns NaN, as torch does.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace nibble::quant {

namespace torch_mean_detail {

inline int64_t last_pow2(int64_t n) {
  // largest power of two <= n (at least 1), for n < 2^31
  uint32_t v = static_cast<uint32_t>(n);
  v |= v >> 1;
  v |= v >> 2;
  v |= v >> 4;
  v |= v >> 8;
  v |= v >> 16;
  int64_t r = static_cast<int64_t>(v - (v >> 1));
  return r < 1 ? 1 : r;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Config {
  bool vectorized;
  int64_t block_width;
  int64_t ctas;
};

inline Config make_config(int64_t n, int num_sms, int max_threads_per_sm) {
  constexpr int64_t kMaxThreads = 512;
  Config c{};
  c.vectorized = n >= 128;
  const int64_t dim0 = c.vectorized ? n / 4 : n;
  c.block_width = dim0 < kMaxThreads ? last_pow2(dim0) : kMaxThreads;
  const int64_t vpt = ceil_div(n, c.block_width);
  c.ctas = 1;
  if (vpt >= 256) {  // (vpt >= 16 also holds, which enables the split)
    const int64_t target_grid = static_cast<int64_t>(num_sms) * (max_threads_per_sm / c.block_width);
    const int64_t c1 = target_grid;  // one output => grid.x == 1
    const int64_t c2 = ceil_div(vpt, 16);
    const int64_t c3 = ceil_div(vpt, 256);
    c.ctas = std::max(std::min(c1, c2), c3);
  }
  return c;
}

// In-block reduction of bw (power of two) lane values; returns lane 0's value.
// Destroys v.
inline float block_reduce(float* v, int64_t bw) {
  if (bw > 32) {
    for (int64_t off = bw / 2; off >= 32; off /= 2)
      for (int64_t i = 0; i < off; ++i) v[i] = v[i] + v[i + off];
  }
  const int64_t dim_x = std::min<int64_t>(bw, 32);
  for (int64_t off = dim_x / 2; off > 0; off /= 2)
    for (int64_t i = 0; i < off; ++i) v[i] = v[i] + v[i + off];
  return v[0];
}

}  // namespace torch_mean_detail

inline float torch_cuda_mean_f32(const float* x, int64_t n, int num_sms = 132) {
  namespace d = torch_mean_detail;
  if (n <= 0) return std::numeric_limits<float>::quiet_NaN();
  constexpr int kMaxThreadsPerSm = 2048;  // sm_80 / sm_90
  const d::Config cfg = d::make_config(n, num_sms, kMaxThreadsPerSm);
  const int64_t bw = cfg.block_width;
  const int64_t ctas = cfg.ctas;
  const int64_t nthreads = bw * ctas;

  std::vector<float> lane(static_cast<size_t>(bw));
  std::vector<float> cta_total(static_cast<size_t>(ctas));

  for (int64_t c = 0; c < ctas; ++c) {
    for (int64_t l = 0; l < bw; ++l) {
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
      if (cfg.vectorized) {
        const int64_t nvec = n / 4;
        for (int64_t v = c * bw + l; v < nvec; v += nthreads) {
          const float* p = x + 4 * v;
          a0 = a0 + p[0];
          a1 = a1 + p[1];
          a2 = a2 + p[2];
          a3 = a3 + p[3];
        }
        const int64_t rem = n % 4;
        if (c == 0 && l < rem) a0 = a0 + x[n - rem + l];
      } else {
        // scalar path (single block): groups of four strided elements
        int64_t i = l;
        for (; i + 3 * bw < n; i += 4 * bw) {
          a0 = a0 + x[i];
          a1 = a1 + x[i + bw];
          a2 = a2 + x[i + 2 * bw];
          a3 = a3 + x[i + 3 * bw];
        }
        if (i < n) a0 = a0 + x[i];
        if (i + bw < n) a1 = a1 + x[i + bw];
        if (i + 2 * bw < n) a2 = a2 + x[i + 2 * bw];
      }
      float t = a0 + a1;
      t = t + a2;
      t = t + a3;
      lane[static_cast<size_t>(l)] = t;
    }
    cta_total[static_cast<size_t>(c)] = d::block_reduce(lane.data(), bw);
  }

  float total;
  if (ctas == 1) {
    total = cta_total[0];
  } else {
    std::fill(lane.begin(), lane.end(), 0.0f);
    for (int64_t k = 0; k < ctas; ++k) {
      float& s = lane[static_cast<size_t>(k % bw)];
      s = s + cta_total[static_cast<size_t>(k)];
    }
    total = d::block_reduce(lane.data(), bw);
  }
  const float factor = 1.0f / static_cast<float>(n);
  return total * factor;
}

}  // namespace nibble::quant
