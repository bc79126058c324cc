// Device helpers shared by the quantization kernels: the float operations of bitsandbytes'
// kernels, which are built with --use_fast_math (max/mul with denormals flushed, the
// approximate reciprocal: quant/gpu_float.h emulates these on the CPU), loading 8 consecutive
// elements of an f32/f16/bf16 tensor as floats (one or two 16-byte loads when aligned and in
// range, zero padding past n otherwise), storing 8 floats rounded to the output dtype, and
// the code searches of the scalar reference (quant/reference.cpp), written so that they give
// the same answer for every float including NaN, ±inf, ±0 and subnormals.
#pragma once

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace nibble::cuda::dev {

// ---- bitsandbytes' fast-math float operations --------------------------------------------------
// Explicit PTX, independent of this build's -ftz/-prec-div flags.
__device__ __forceinline__ float max_ftz(float a, float b) {  // fmaxf (NaN skipped), denormals as 0
  float r;
  asm("max.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float mul_ftz(float a, float b) {
  float r;
  asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float rcp_approx_ftz(float a) {  // what 1.0f / a compiles to there
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(a));
  return r;
}

// ---- element types ---------------------------------------------------------------------------
// Tags select the load/store code at compile time; kBytes is the element size.
struct F32 {
  static constexpr int kBytes = 4;
};
struct F16 {
  static constexpr int kBytes = 2;
};
struct BF16 {
  static constexpr int kBytes = 2;
};

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t h) {
  return __uint_as_float(h << 16);
}
__device__ __forceinline__ float f16_bits_to_f32(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

// One element i of a tensor (no bounds check).
template <class T>
__device__ __forceinline__ float load1(const void* base, int64_t i) {
  if constexpr (T::kBytes == 4)
    return static_cast<const float*>(base)[i];
  else if constexpr (std::is_same_v<T, F16>)
    return f16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
  else
    return bf16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
}

// Two 16-bit elements packed in a word (element 2k in the low half: little endian).
template <class T>
__device__ __forceinline__ void unpack2(uint32_t w, float& lo, float& hi) {
  if constexpr (std::is_same_v<T, BF16>) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
  } else {
    float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
    lo = f.x;
    hi = f.y;
  }
}

// 8 consecutive elements as loaded, before conversion: the registers a prefetch keeps in
// flight (16 bytes for f16/bf16, 32 for f32).
template <class T>
struct Raw8 {
  uint4 w;  // 16-bit elements, element 2k in the low half of word k
};
template <>
struct Raw8<F32> {
  float4 a, b;
};

// The chunk at e0 (a multiple of 8): vector loads when `vec` and the chunk is whole, else
// guarded scalar loads with zeros past n.
template <class T>
__device__ __forceinline__ Raw8<T> load_raw8(const void* __restrict__ base, int64_t e0, int64_t n, bool vec) {
  Raw8<T> r;
  if constexpr (T::kBytes == 4) {
    const float* p = static_cast<const float*>(base) + e0;
    if (vec && e0 + 8 <= n) {
      r.a = reinterpret_cast<const float4*>(p)[0];
      r.b = reinterpret_cast<const float4*>(p)[1];
    } else {
      float t[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) t[k] = e0 + k < n ? p[k] : 0.0f;
      r.a = make_float4(t[0], t[1], t[2], t[3]);
      r.b = make_float4(t[4], t[5], t[6], t[7]);
    }
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + e0;
    if (vec && e0 + 8 <= n) {
      r.w = *reinterpret_cast<const uint4*>(p);
    } else {
      uint32_t t[4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        t[j] = (e0 + 2 * j < n ? uint32_t(p[2 * j]) : 0u) |
               (e0 + 2 * j + 1 < n ? uint32_t(p[2 * j + 1]) << 16 : 0u);
      r.w = make_uint4(t[0], t[1], t[2], t[3]);
    }
  }
  return r;
}

template <class T>
__device__ __forceinline__ void unpack8(const Raw8<T>& r, float (&v)[8]) {
  if constexpr (T::kBytes == 4) {
    v[0] = r.a.x, v[1] = r.a.y, v[2] = r.a.z, v[3] = r.a.w, v[4] = r.b.x, v[5] = r.b.y, v[6] = r.b.z,
    v[7] = r.b.w;
  } else {
    unpack2<T>(r.w.x, v[0], v[1]);
    unpack2<T>(r.w.y, v[2], v[3]);
    unpack2<T>(r.w.z, v[4], v[5]);
    unpack2<T>(r.w.w, v[6], v[7]);
  }
}

// Round-to-nearest-even conversions. The hardware conversions keep subnormals and turn the
// (always canonical, 0x7fffffff) NaN of GPU arithmetic into 0x7fff, which is what the
// reference's bit formulas give for that NaN.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, BF16>) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

template <class T>
__device__ __forceinline__ void store1(void* base, int64_t i, float v) {
  if constexpr (T::kBytes == 4)
    static_cast<float*>(base)[i] = v;
  else if constexpr (std::is_same_v<T, F16>)
    static_cast<uint16_t*>(base)[i] = __half_as_ushort(__float2half_rn(v));
  else
    static_cast<uint16_t*>(base)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// out[e0 + k] = v[k] for k < 8 and e0 + k < n; vector stores when `vec` and the chunk is whole.
template <class T>
__device__ __forceinline__ void store8(void* __restrict__ base, int64_t e0, int64_t n, bool vec,
                                       const float (&v)[8]) {
  if (vec && e0 + 8 <= n) {
    if constexpr (T::kBytes == 4) {
      float4* p = reinterpret_cast<float4*>(static_cast<float*>(base) + e0);
      p[0] = make_float4(v[0], v[1], v[2], v[3]);
      p[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      uint4 w =
          make_uint4(pack2<T>(v[0], v[1]), pack2<T>(v[2], v[3]), pack2<T>(v[4], v[5]), pack2<T>(v[6], v[7]));
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + e0) = w;
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (e0 + k < n) store1<T>(base, e0 + k, v[k]);
}

// ---- code searches -----------------------------------------------------------------------------
// off + kStep when x > t (ordered compare: false for NaN), else off. Written as a predicated
// add so that each search level costs one compare and one add.
template <uint32_t kStep>
__device__ __forceinline__ uint32_t add_if_greater(uint32_t off, float x, float t) {
  asm("{\n\t.reg .pred p;\n\tsetp.gt.f32 p, %1, %2;\n\t@p add.u32 %0, %0, %3;\n\t}"
      : "+r"(off)
      : "f"(x), "f"(t), "n"(kStep));
  return off;
}

// The float at shared-memory address `addr` + kOff. Volatile: it must stay after the barrier
// that published the table.
template <int kOff>
__device__ __forceinline__ float lds_at(uint32_t addr) {
  float t;
  asm volatile("ld.shared.f32 %0, [%1+%2];" : "=f"(t) : "r"(addr), "n"(kOff));
  return t;
}

// NF4: the shared-memory address of bound[code], code = the number of the 15 ascending
// boundaries strictly below x, found by a 4-step binary search that walks the address itself
// (no index arithmetic). `bound` is the table's address, 64-byte aligned, so the result minus
// `bound` is 4*code; the 16 words sit in distinct banks, so any access pattern is
// conflict-free. `b7` is bound[7] in a register. NaN fails every ">" and gives code 0, as the
// reference's count does.
__device__ __forceinline__ uint32_t nf4_code_addr(float x, float b7, uint32_t bound) {
  uint32_t a = x > b7 ? bound + 32u : bound;
  a = add_if_greater<16>(a, x, lds_at<12>(a));
  a = add_if_greater<8>(a, x, lds_at<4>(a));
  a = add_if_greater<4>(a, x, lds_at<0>(a));
  return a;
}

// FP4: sign bit (x < 0; NaN and -0 give 0) | E2M1 code of the magnitude bin, the bin being the
// number of the 7 magnitude boundaries strictly below |x| (3-step binary search over
// addresses as above). bin_code holds the 3-bit code of bin k in bits 4k..4k+2, so 4*bin is
// also the shift that extracts it.
__device__ __forceinline__ uint32_t fp4_code(float x, float b3, uint32_t bound, uint32_t bin_code) {
  const float a = fabsf(x);
  uint32_t p = a > b3 ? bound + 16u : bound;
  p = add_if_greater<8>(p, a, lds_at<4>(p));
  p = add_if_greater<4>(p, a, lds_at<0>(p));
  return ((bin_code >> (p - bound)) & 7u) | (x < 0.0f ? 8u : 0u);
}

// bitsandbytes' 8-bit dynamic-map search (reference quantize_dynamic), code in shared memory.
__device__ __forceinline__ uint32_t dynamic_code(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
#pragma unroll
  for (int step = 64; step > 0; step >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += step;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= step;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    float mid = __fmul_rn(__fadd_rn(upper, val), 0.5f);
    return uint32_t(x > mid ? upper_pivot : pivot);
  }
  float mid = __fmul_rn(__fadd_rn(lower, val), 0.5f);
  return uint32_t(x < mid ? lower_pivot : pivot);
}

// ---- reductions ----------------------------------------------------------------------------------
// fmaxf over the `width` lanes of an aligned lane group (width a power of two <= 32). fmaxf of
// non-NaN values is exact and order-free, so any tree gives the reference's sequential result.
template <int kWidth>
__device__ __forceinline__ float group_max(float m) {
#pragma unroll
  for (int off = kWidth / 2; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  return m;
}

__host__ __device__ constexpr int ilog2(int64_t v) {
  int r = 0;
  while ((int64_t(1) << (r + 1)) <= v) ++r;
  return r;
}

}  // namespace nibble::cuda::dev
