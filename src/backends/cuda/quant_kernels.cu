// CUDA NF4/FP4 blockwise quantization and dequantization, one pass each, producing the
// scalar reference's bytes (quant/reference.cpp).
//
// Quantize: a thread owns a chunk of 8 consecutive elements (one 16-byte load for f16/bf16,
// two for f32) in each of kQuantTiles tiles of a group, so every load of the warp is
// coalesced. A persistent grid walks the groups and loads the next group while coding the
// current one: the code search costs about as much issue time as the bytes cost memory time,
// so the two must overlap to approach copy bandwidth. The blocksize/8 lanes covering one quant
// block reduce its absmax with xor shuffles (and through shared memory when a block spans
// several warps, blocksize > 256), then each lane scales its 8 values by the reciprocal, looks
// the codes up by binary search in a shared boundary table and writes 4 packed bytes as one
// word:
//   word (little endian) = byte0 | byte1 << 8 | ..., byte j = code(x[2j]) << 4 | code(x[2j+1])
// Dequantize: a thread expands kDequantTiles chunks of 4 packed bytes (8 values, one absmax each since
// blocksize >= 32 is a multiple of 8) with a 16-entry shared code table and writes 16- or
// 32-byte vectors. All float operations are bitsandbytes' fast-math ones (quant_device.cuh).
#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <type_traits>

#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/quant_cuda.h"
#include "backends/cuda/quant_launch.h"
#include "nibble/quant.h"
#include "quant/reference.h"

namespace nibble::cuda {

namespace {

// Boundary tables of the reference, passed by value (kernel parameter space) and copied to
// shared memory, where a data-dependent index costs no serialization.
struct Quant4Tables {
  float bound[16];        // NF4: the 15 code boundaries; FP4: the 7 magnitude boundaries
  uint32_t fp4_bin_code;  // FP4: E2M1 code of magnitude bin k in bits 4k..4k+2
};

struct Code16 {
  float v[16];  // code -> value
};

Quant4Tables make_tables(DType quant_type) {
  Quant4Tables t{};
  if (quant_type == DType::NF4) {
    for (int i = 0; i < 15; ++i) t.bound[i] = quant::ref::kNf4Boundaries[i];
  } else {
    for (int i = 0; i < 7; ++i) t.bound[i] = quant::ref::kFp4Boundaries[i];
    for (int k = 0; k < 8; ++k) t.fp4_bin_code |= uint32_t(quant::ref::kFp4BinCode[k]) << (4 * k);
  }
  return t;
}

constexpr int kQuantTiles = 2;    // independent 8-element chunks per thread (loads in flight)
constexpr int kDequantTiles = 4;  // chunks of 4 packed bytes per thread

template <int kB>
struct QuantShape {
  static constexpr int kLanes = kB / 8;                         // lanes per quant block
  static constexpr int kThreads = kLanes > 256 ? kLanes : 256;  // CTA size
  static constexpr int kTile = kThreads * 8;                    // elements per tile
  static constexpr int kGroup = kLanes < 32 ? kLanes : 32;      // shuffle width
  static constexpr int kBlockWarps = kLanes > 32 ? kLanes / 32 : 1;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kLog2B = dev::ilog2(kB);
};

// Nibble k (0..7) of a chunk's word: byte k/2, high nibble for even k.
__device__ __forceinline__ int nibble_shift(int k) {
  return 8 * (k / 2) + ((k & 1) ? 0 : 4);
}

// x: [n] elements of T; packed: [(n + 1) / 2]; absmax: [ceil(n / kB)].
// vec_in: x is 16-byte aligned; vec_out: packed is 4-byte aligned.
// The CTA walks groups of kQuantTiles tiles, g = blockIdx.x, + gridDim.x, ...; the loads of
// the next group are issued before the math of the current one, so memory stays busy while
// the codes are computed (a grid of one CTA per group degenerates to a plain one-pass kernel).
template <class T, int kB, bool kNf4>
__global__ void __launch_bounds__(QuantShape<kB>::kThreads)
    quantize_4bit_kernel(const void* __restrict__ x, int64_t n, Quant4Tables tab,
                         uint8_t* __restrict__ packed, float* __restrict__ absmax, bool vec_in,
                         bool vec_out) {
  using S = QuantShape<kB>;
  static_assert(S::kThreads % (S::kBlockWarps * 32) == 0 || S::kLanes <= 32,
                "a quant block spans whole warps");
  __shared__ __align__(64) float s_bound[16];
  __shared__ float s_red[2][kQuantTiles][S::kWarps];  // [parity][tile][warp] maxima, when kLanes > 32
  if (threadIdx.x < 16) s_bound[threadIdx.x] = tab.bound[threadIdx.x];
  __syncthreads();  // publishes s_bound; warps run independently from here (kLanes <= 32)

  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const float b_mid = kNf4 ? s_bound[7] : s_bound[3];
  const uint32_t bound = static_cast<uint32_t>(__cvta_generic_to_shared(s_bound));
  const int64_t group_elems = int64_t(kQuantTiles) * S::kTile;
  const int64_t ngroups = (n + group_elems - 1) / group_elems;

  dev::Raw8<T> cur[kQuantTiles], nxt[kQuantTiles];  // [tile]
  int64_t g = blockIdx.x;
#pragma unroll
  for (int u = 0; u < kQuantTiles; ++u)
    cur[u] = dev::load_raw8<T>(x, g * group_elems + int64_t(u) * S::kTile + tid * 8, n, vec_in);
  for (int parity = 0; g < ngroups; g += gridDim.x, parity ^= 1) {
    const int64_t cta0 = g * group_elems + int64_t(tid) * 8;
    if (g + gridDim.x < ngroups) {
#pragma unroll
      for (int u = 0; u < kQuantTiles; ++u)
        nxt[u] =
            dev::load_raw8<T>(x, cta0 + int64_t(gridDim.x) * group_elems + int64_t(u) * S::kTile, n, vec_in);
    }
    float v[kQuantTiles][8];  // [tile][element]
#pragma unroll
    for (int u = 0; u < kQuantTiles; ++u) dev::unpack8<T>(cur[u], v[u]);

    // Block absmax: fmaxf from -FLT_MAX over |x| with denormals flushed; elements past n
    // load as 0, which is exactly the reference's padding of a partial last block.
    float m[kQuantTiles];
#pragma unroll
    for (int u = 0; u < kQuantTiles; ++u) {
      m[u] = -FLT_MAX;
#pragma unroll
      for (int k = 0; k < 8; ++k) m[u] = dev::max_ftz(m[u], fabsf(v[u][k]));
      m[u] = dev::group_max<S::kGroup>(m[u]);
    }
    if constexpr (S::kLanes > 32) {  // a quant block spans several warps: via shared memory
#pragma unroll
      for (int u = 0; u < kQuantTiles; ++u)
        if (lane == 0) s_red[parity][u][warp] = m[u];
      __syncthreads();  // (the other parity buffer is still being read: no second barrier)
      const int first = warp / S::kBlockWarps * S::kBlockWarps;  // first warp of this quant block
#pragma unroll
      for (int u = 0; u < kQuantTiles; ++u) {
        float r = s_red[parity][u][first];
#pragma unroll
        for (int w = 1; w < S::kBlockWarps; ++w) r = fmaxf(r, s_red[parity][u][first + w]);
        m[u] = r;
      }
    }

#pragma unroll
    for (int u = 0; u < kQuantTiles; ++u) {
      const int64_t e0 = cta0 + int64_t(u) * S::kTile;
      if (e0 >= n) continue;
      const float inv = dev::rcp_approx_ftz(m[u]);  // bitsandbytes' 1.0f / m under fast math
      uint32_t word = 0;
      if constexpr (kNf4) {
        // The search yields addr = bound + 4*code. Sum addr << shift for bytes 0-1 and 2-3
        // separately (4*code << shift stays below 2^32), subtract the sum of bound << shift
        // (exact modulo 2^32), then drop the factor 4.
        uint32_t lo = 0, hi = 0, base_lo = 0, base_hi = 0;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const uint32_t a = dev::nf4_code_addr(dev::mul_ftz(v[u][k], inv), b_mid, bound);
          const int sh = nibble_shift(k);
          if (sh < 16)
            lo += a << sh, base_lo += bound << sh;
          else
            hi += a << (sh - 16), base_hi += bound << (sh - 16);
        }
        word = ((lo - base_lo) >> 2) | ((hi - base_hi) << 14);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k)
          word |= dev::fp4_code(dev::mul_ftz(v[u][k], inv), b_mid, bound, tab.fp4_bin_code)
                  << nibble_shift(k);
      }
      if (e0 + 8 <= n && vec_out) {
        *reinterpret_cast<uint32_t*>(packed + e0 / 2) = word;
      } else {
        // tail: nibbles of elements past n stay 0 (an odd n leaves the last low nibble 0)
#pragma unroll
        for (int k = 0; k < 8; ++k)
          if (e0 + k >= n) word &= ~(0xfu << nibble_shift(k));
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (e0 + 2 * j < n) packed[e0 / 2 + j] = uint8_t(word >> (8 * j));
      }
      if (tid % S::kLanes == 0) absmax[e0 >> S::kLog2B] = m[u];
    }
#pragma unroll
    for (int u = 0; u < kQuantTiles; ++u) cur[u] = nxt[u];
  }
}

// packed: [(n + 1) / 2]; absmax: [ceil(n / 2^log2b)]; out: [n] of Out.
// vec_in: packed is 4-byte aligned; vec_out: out is 16-byte aligned.
template <class Out>
__global__ void __launch_bounds__(256)
    dequantize_4bit_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax, int64_t n,
                           int log2b, Code16 code, void* __restrict__ out, bool vec_in, bool vec_out) {
  __shared__ float s_code[16];
  if (threadIdx.x < 16) s_code[threadIdx.x] = code.v[threadIdx.x];
  __syncthreads();

  uint32_t w[kDequantTiles];
  float a[kDequantTiles];
  int64_t e0[kDequantTiles];
#pragma unroll
  for (int u = 0; u < kDequantTiles; ++u) {  // all loads first, then the math and stores
    e0[u] = ((int64_t(blockIdx.x) * kDequantTiles + u) * blockDim.x + threadIdx.x) * 8;
    w[u] = 0;
    a[u] = 0.0f;
    if (e0[u] >= n) continue;
    if (vec_in && e0[u] + 8 <= n) {
      w[u] = *reinterpret_cast<const uint32_t*>(packed + e0[u] / 2);
    } else {
      for (int j = 0; j < 4; ++j)
        if (e0[u] + 2 * j < n) w[u] |= uint32_t(packed[e0[u] / 2 + j]) << (8 * j);
    }
    a[u] = absmax[e0[u] >> log2b];
  }
#pragma unroll
  for (int u = 0; u < kDequantTiles; ++u) {
    if (e0[u] >= n) continue;
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = dev::mul_ftz(s_code[(w[u] >> nibble_shift(k)) & 0xfu], a[u]);
    dev::store8<Out>(out, e0[u], n, vec_out, v);
  }
}

// Grid of the quantize kernel: as many CTAs as fit on the device at once (persistent), at
// most one per group. Environment knob for experiments: NIBBLE_CUDA_QUANT4_GRID=full launches
// one CTA per group (no prefetch across groups).
template <class T, int kB, bool kNf4>
int64_t quantize_grid(int64_t ngroups) {
  if (const char* e = std::getenv("NIBBLE_CUDA_QUANT4_GRID"); e && std::string_view(e) == "full")
    return ngroups;
  static const int per_sm = [] {
    int p = 0;
    NIBBLE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&p, quantize_4bit_kernel<T, kB, kNf4>,
                                                                    QuantShape<kB>::kThreads, 0));
    return std::max(p, 1);
  }();
  int dev_id = 0, sms = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&dev_id));
  NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev_id));
  return std::min(ngroups, int64_t(sms) * per_sm);
}

template <class F>
void with_blocksize_4bit(int64_t bs, F&& f) {
  switch (bs) {
    case 32:
      f(std::integral_constant<int, 32>{});
      return;
    case 64:
      f(std::integral_constant<int, 64>{});
      return;
    case 128:
      f(std::integral_constant<int, 128>{});
      return;
    case 256:
      f(std::integral_constant<int, 256>{});
      return;
    case 512:
      f(std::integral_constant<int, 512>{});
      return;
    case 1024:
      f(std::integral_constant<int, 1024>{});
      return;
    case 2048:
      f(std::integral_constant<int, 2048>{});
      return;
    case 4096:
      f(std::integral_constant<int, 4096>{});
      return;
    default:
      throw ConfigError(
          detail::str("quantize_4bit (CUDA): blocksize ", bs, " is not a power of two in 32..4096"));
  }
}

void check_quant_type(const char* op, DType qt) {
  if (qt != DType::NF4 && qt != DType::FP4)
    throw ConfigError(detail::str(op, ": quant_type must be nf4 or fp4, got ", dtype_name(qt)));
}

}  // namespace

namespace launch {

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax, void* stream) {
  check_quant_type("quantize_4bit (CUDA)", quant_type);
  if (n <= 0) return;
  const Quant4Tables tab = make_tables(quant_type);
  const bool vec_in = aligned(x, 16), vec_out = aligned(packed, 4);
  with_float_dtype("quantize_4bit", dt, [&](auto tag) {
    using T = decltype(tag);
    with_blocksize_4bit(blocksize, [&](auto bsc) {
      constexpr int kB = decltype(bsc)::value;
      using S = QuantShape<kB>;
      const int64_t ngroups = ceil_div(n, int64_t(kQuantTiles) * S::kTile);
      if (quant_type == DType::NF4)
        quantize_4bit_kernel<T, kB, true>
            <<<unsigned(quantize_grid<T, kB, true>(ngroups)), S::kThreads, 0, as_stream(stream)>>>(
                x, n, tab, packed, absmax, vec_in, vec_out);
      else
        quantize_4bit_kernel<T, kB, false>
            <<<unsigned(quantize_grid<T, kB, false>(ngroups)), S::kThreads, 0, as_stream(stream)>>>(
                x, n, tab, packed, absmax, vec_in, vec_out);
      NIBBLE_CUDA_CHECK_LAUNCH();
    });
  });
}

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     DType quant_type, void* out, DType out_dt, void* stream) {
  check_quant_type("dequantize_4bit (CUDA)", quant_type);
  if (!valid_blocksize_4bit(blocksize))
    throw ConfigError(
        detail::str("dequantize_4bit (CUDA): blocksize ", blocksize, " is not a power of two in 32..4096"));
  if (n <= 0) return;
  Code16 code{};
  const float* table = dequant_table_4bit(quant_type);  // FP4 code 8 is -0.0 here
  for (int i = 0; i < 16; ++i) code.v[i] = table[i];
  const int log2b = dev::ilog2(blocksize);
  const bool vec_in = aligned(packed, 4), vec_out = aligned(out, 16);
  const int64_t grid = ceil_div(ceil_div(n, 8), int64_t(kDequantTiles) * 256);
  with_float_dtype("dequantize_4bit", out_dt, [&](auto tag) {
    dequantize_4bit_kernel<decltype(tag)>
        <<<unsigned(grid), 256, 0, as_stream(stream)>>>(packed, absmax, n, log2b, code, out, vec_in, vec_out);
    NIBBLE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace launch

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax) {
  if (n <= 0) return;
  DeviceGuard g(x);
  launch::quantize_4bit(x, dt, n, blocksize, quant_type, packed, absmax, nullptr);
  finish();
}

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     DType quant_type, void* out, DType out_dt) {
  if (n <= 0) return;
  DeviceGuard g(packed);
  launch::dequantize_4bit(packed, absmax, n, blocksize, quant_type, out, out_dt, nullptr);
  finish();
}

}  // namespace nibble::cuda
