// CUDA 8-bit blockwise quantization with the signed dynamic map, the nested (double-quantized)
// absmax of the 4-bit format, and the device copy of the map. Bytes as the scalar reference.
//
// Blockwise 8-bit serves any positive blocksize (the op accepts any; bitsandbytes uses powers
// of two): a CTA walks quant blocks, reduces the block absmax over strided elements, then
// maps every value with bitsandbytes' binary search over the 256-entry code in shared memory.
// Float operations are bitsandbytes' fast-math ones (quant_device.cuh).
// Its main user here is double quantization (blocksize 256 over the 4-bit absmax), whose
// offset, torch's CUDA mean, is computed on the device in torch's order (torch_mean.cu) and
// subtracted on the fly, so the whole step needs no round trip through the host.
#include <cfloat>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "backends/cuda/launch_util.cuh"
#include "backends/cuda/quant_cuda.h"
#include "backends/cuda/quant_launch.h"
#include "nibble/quant.h"

namespace nibble::cuda {

namespace {

// Max over the CTA (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// s_red: [32] floats; the trailing barrier lets the caller reuse it.
__device__ float cta_max(float m, float* s_red) {
  m = dev::group_max<32>(m);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) s_red[warp] = m;
  __syncthreads();
  float r = s_red[0];
  for (int w = 1; w < nw; ++w) r = fmaxf(r, s_red[w]);
  __syncthreads();
  return r;
}

// x: [n] of T (minus *offset when offset is given); q: [n]; absmax: [ceil(n / blocksize)].
template <class T>
__global__ void quantize_blockwise8_kernel(const void* __restrict__ x, int64_t n, int64_t blocksize,
                                           const float* __restrict__ code, const float* __restrict__ offset,
                                           uint8_t* __restrict__ q, float* __restrict__ absmax) {
  __shared__ float s_code[256];
  __shared__ float s_red[32];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) s_code[i] = code[i];
  const float off = offset ? *offset : 0.0f;
  auto value = [&](int64_t i) {
    float v = dev::load1<T>(x, i);
    return offset ? __fsub_rn(v, off) : v;
  };
  const int64_t nb = (n + blocksize - 1) / blocksize;
  for (int64_t b = blockIdx.x; b < nb; b += gridDim.x) {
    const int64_t begin = b * blocksize, end = min(n, begin + blocksize);
    // a partial last block starts from 0: the kernel's zero padding (reference block_absmax)
    float m = end - begin < blocksize ? 0.0f : -FLT_MAX;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) m = dev::max_ftz(m, fabsf(value(i)));
    m = cta_max(m, s_red);  // its first barrier also publishes s_code
    const float inv = dev::rcp_approx_ftz(m);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x)
      q[i] = uint8_t(dev::dynamic_code(s_code, dev::mul_ftz(value(i), inv)));
    if (threadIdx.x == 0) absmax[b] = m;
  }
}

// q: [n]; absmax: [ceil(n / blocksize)]; out: [n] of Out. Eight values per thread; log2b >= 0
// when blocksize is a power of two (a shift instead of a 64-bit division).
template <class Out>
__global__ void __launch_bounds__(256)
    dequantize_blockwise8_kernel(const uint8_t* __restrict__ q, const float* __restrict__ absmax,
                                 const float* __restrict__ code, int64_t n, int64_t blocksize, int log2b,
                                 void* __restrict__ out, bool vec_in, bool vec_out) {
  __shared__ float s_code[256];
  s_code[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int64_t e0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (e0 >= n) return;
  uint8_t c[8];
  if (vec_in && e0 + 8 <= n) {
    uint2 w = *reinterpret_cast<const uint2*>(q + e0);
#pragma unroll
    for (int k = 0; k < 4; ++k) c[k] = uint8_t(w.x >> (8 * k)), c[k + 4] = uint8_t(w.y >> (8 * k));
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) c[k] = e0 + k < n ? q[e0 + k] : 0;
  }
  float v[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int64_t i = min(e0 + k, n - 1);
    const int64_t b = log2b >= 0 ? i >> log2b : i / blocksize;
    v[k] = dev::mul_ftz(s_code[c[k]], absmax[b]);
  }
  dev::store8<Out>(out, e0, n, vec_out, v);
}

// absmax[i] = code[q[i]] * absmax2[i / 256] + offset: bitsandbytes' (flushing) multiply, then
// torch's plain add.
__global__ void __launch_bounds__(256)
    dequantize_nested_absmax_kernel(const uint8_t* __restrict__ q, const float* __restrict__ absmax2,
                                    float offset, int64_t nb, const float* __restrict__ code,
                                    float* __restrict__ absmax) {
  __shared__ float s_code[256];
  s_code[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < nb)
    absmax[i] = __fadd_rn(dev::mul_ftz(s_code[q[i]], absmax2[i >> 8]), offset);  // torch's add: no flush
}

int threads_for_blocksize(int64_t blocksize) {
  int t = 32;
  while (t < 256 && t < blocksize) t *= 2;
  return t;
}

}  // namespace

namespace {
// One upload of a code table per device, kept for the life of the process. table: 0 the
// dynamic map, 1 NF4, 2 FP4.
const float* device_table(int table, const float* host, size_t n) {
  static std::mutex mu;
  static std::vector<float*> maps[3];
  int dev_id = 0;
  NIBBLE_CUDA_CHECK(cudaGetDevice(&dev_id));
  std::lock_guard<std::mutex> lock(mu);
  std::vector<float*>& m = maps[table];
  if (m.size() <= size_t(dev_id)) m.resize(size_t(dev_id) + 1, nullptr);
  if (!m[size_t(dev_id)]) {
    float* p = nullptr;
    NIBBLE_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
    NIBBLE_CUDA_CHECK(cudaMemcpy(p, host, n * sizeof(float), cudaMemcpyHostToDevice));
    m[size_t(dev_id)] = p;
  }
  return m[size_t(dev_id)];
}
}  // namespace

const float* device_dynamic_map() {
  return device_table(0, dynamic_map_signed().data(), 256);
}

const float* device_quant_map(DType quant_type) {
  if (quant_type != DType::NF4 && quant_type != DType::FP4)
    throw ShapeError(detail::str("device_quant_map: not a 4-bit type: ", dtype_name(quant_type)));
  return device_table(quant_type == DType::NF4 ? 1 : 2, code_table_4bit(quant_type), 16);
}

namespace launch {

void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code,
                         const float* offset, uint8_t* q, float* absmax, void* stream) {
  if (blocksize <= 0)
    throw ConfigError(detail::str("quantize_blockwise8 (CUDA): blocksize must be positive"));
  if (offset && dt != DType::F32) throw InternalError("quantize_blockwise8 (CUDA): offset needs f32 input");
  if (n <= 0) return;
  const int64_t nb = ceil_div(n, blocksize);
  const unsigned grid = unsigned(std::min<int64_t>(nb, int64_t(1) << 20));
  const int threads = threads_for_blocksize(blocksize);
  with_float_dtype("quantize_blockwise8", dt, [&](auto tag) {
    quantize_blockwise8_kernel<decltype(tag)>
        <<<grid, threads, 0, as_stream(stream)>>>(x, n, blocksize, code, offset, q, absmax);
    NIBBLE_CUDA_CHECK_LAUNCH();
  });
}

void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                           int64_t blocksize, void* out, DType out_dt, void* stream) {
  if (blocksize <= 0)
    throw ConfigError(detail::str("dequantize_blockwise8 (CUDA): blocksize must be positive"));
  if (n <= 0) return;
  const int log2b = (blocksize & (blocksize - 1)) == 0 ? dev::ilog2(blocksize) : -1;
  const int64_t grid = ceil_div(ceil_div(n, 8), 256);
  const bool vec_in = aligned(q, 8), vec_out = aligned(out, 16);
  with_float_dtype("dequantize_blockwise8", out_dt, [&](auto tag) {
    dequantize_blockwise8_kernel<decltype(tag)><<<unsigned(grid), 256, 0, as_stream(stream)>>>(
        q, absmax, code, n, blocksize, log2b, out, vec_in, vec_out);
    NIBBLE_CUDA_CHECK_LAUNCH();
  });
}

void double_quantize_absmax(const float* absmax, int64_t nb, uint8_t* q, float* absmax2, float* offset,
                            void* stream) {
  if (nb <= 0) return;
  torch_mean_f32(absmax, nb, offset, stream);
  quantize_blockwise8(absmax, DType::F32, nb, 256, device_dynamic_map(), offset, q, absmax2, stream);
}

void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb, float* absmax,
                              void* stream) {
  if (nb <= 0) return;
  dequantize_nested_absmax_kernel<<<unsigned(ceil_div(nb, 256)), 256, 0, as_stream(stream)>>>(
      q, absmax2, offset, nb, device_dynamic_map(), absmax);
  NIBBLE_CUDA_CHECK_LAUNCH();
}

}  // namespace launch

void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                         float* absmax) {
  if (n <= 0) return;
  DeviceGuard g(x);
  launch::quantize_blockwise8(x, dt, n, blocksize, code, nullptr, q, absmax, nullptr);
  finish();
}

void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                           int64_t blocksize, void* out, DType out_dt) {
  if (n <= 0) return;
  DeviceGuard g(q);
  launch::dequantize_blockwise8(q, absmax, code, n, blocksize, out, out_dt, nullptr);
  finish();
}

float double_quantize_absmax(const float* absmax, int64_t nb, uint8_t* q, float* absmax2) {
  if (nb <= 0) return std::numeric_limits<float>::quiet_NaN();  // torch: mean of nothing
  DeviceGuard g(absmax);
  float* d_offset = nullptr;
  NIBBLE_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&d_offset), sizeof(float), nullptr));
  float offset = 0.0f;
  try {
    launch::double_quantize_absmax(absmax, nb, q, absmax2, d_offset, nullptr);
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(&offset, d_offset, sizeof(float), cudaMemcpyDeviceToHost, nullptr));
  } catch (...) {
    cudaFreeAsync(d_offset, nullptr);
    throw;
  }
  NIBBLE_CUDA_CHECK(cudaFreeAsync(d_offset, nullptr));
  finish();
  return offset;
}

void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb,
                              float* absmax) {
  if (nb <= 0) return;
  DeviceGuard g(q);
  launch::dequantize_nested_absmax(q, absmax2, offset, nb, absmax, nullptr);
  finish();
}

}  // namespace nibble::cuda
