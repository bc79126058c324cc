// CPU linear ops: thread partition over output features, the epilogues (bias, rounding, the
// LLM.int8 dequantization) and the portable inner kernels. The AVX2 kernels live in
// linear_avx2.cpp; both compute the same sums, only the summation order differs.
#include "backends/cpu/linear_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "backends/cpu/isa.h"
#include "backends/cpu/quant_cpu.h"
#include "nibble/error.h"
#include "nibble/quant.h"
#include "nibble/thread_pool.h"
#include "quant/gpu_float.h"

namespace nibble::cpu {

bool use_avx2_kernels() {
  return isa_at_least(Isa::Avx2);
}
void set_portable_kernels(bool on) {
  if (on)
    set_cpu_isa(Isa::Scalar);
  else
    reset_cpu_isa();
}

namespace {

int64_t elem_size(DType dt) {
  return dtype_bits(dt) / 8;
}
const char* row_ptr(const void* w, DType dt, int64_t row, int64_t K) {
  return static_cast<const char*>(w) + row * K * elem_size(dt);
}

// x [M, K] rounded to dt, or x itself when dt is F32.
const float* rounded_input(const float* x, int64_t M, int64_t K, DType dt, std::vector<float>& buf) {
  if (dt == DType::F32) return x;
  buf.resize(size_t(M * K));
  float* y = buf.data();
  const bool simd = isa_at_least(Isa::Avx512);
  parallel_for(M * K, 1 << 16, [&](int64_t b, int64_t e) {
    if (simd) return avx512::round_into(x + b, y + b, e - b, dt);
    for (int64_t i = b; i < e; ++i) y[i] = round_to_dtype(x[i], dt);
  });
  return y;
}

// bias [N] as f32, rounded to round_to (transformers casts the bias to the compute dtype).
std::vector<float> bias_f32(const void* bias, DType bias_dt, int64_t N, DType round_to) {
  std::vector<float> b;
  if (!bias) return b;
  b.resize(size_t(N));
  for (int64_t n = 0; n < N; ++n) b[size_t(n)] = round_to_dtype(load_as_f32(bias, bias_dt, n), round_to);
  return b;
}

// out[:, n0:n1) = round(out + bias)
void epilogue(float* out, int64_t M, int64_t N, int64_t n0, int64_t n1, const std::vector<float>& bias,
              DType round_to) {
  if (round_to == DType::F32 && bias.empty()) return;
  if (isa_at_least(Isa::Avx512)) {
    for (int64_t m = 0; m < M; ++m) avx512::add_round(out + m * N + n0, bias.empty() ? nullptr : bias.data() + n0, n1 - n0, round_to);
    return;
  }
  for (int64_t m = 0; m < M; ++m) {
    float* o = out + m * N;
    for (int64_t n = n0; n < n1; ++n) {
      float v = bias.empty() ? o[n] : o[n] + bias[size_t(n)];
      o[n] = round_to_dtype(v, round_to);
    }
  }
}

// Rows of x from which the packed GEMMs beat register tiles over W's rows.
constexpr int64_t kGemmRows = 24;

// Whether x [M, K] (rounded to dt) may take the bf16 GEMV: dt is BF16, M < kGemmRows (the GEMV
// runs 4 rows of x at a time) and no value is a bf16 subnormal. (Prefill keeps the fp32 GEMM: on
// the Xeon this was measured on, vdpbf16ps reached 69 GFLOP/s in gemm_avx512.cpp's kernel
// against 108 for AVX-512 FMAs.)
bool x_is_bf16(const float* x, int64_t M, int64_t K, DType dt) {
  return dt == DType::BF16 && M < kGemmRows && isa_at_least(Isa::Avx512Bf16) &&
         !avx512::has_bf16_subnormal(x, M * K);
}

// Rows of x from which the AMX GEMMs take over (from the GEMVs below kGemmRows: a server's
// decode batch). Measured on the 2-core Xeon, 2 threads, an 8192 x 2048 weight in L3, best of 5:
// NF4 + DQ (bf16 compute) GEMV 1.0-1.3 / 2.4-2.7 / 4.8-5.6 ms at M = 4 / 8 / 16, AMX 1.7 ms at 8
// and 16 (bound by the dequantization to bf16, not the tiles); LLM.int8 VNNI 0.38 / 0.68 / 0.89
// ms at M = 4 / 8 / 12, AMX 0.57 / 0.59 / 0.61 ms.
constexpr int64_t kAmxRows = 8, kAmxRowsInt8 = 8;

// Whether the AMX GEMM takes x [M, K] (already rounded to round_to): the Amx level, bf16
// compute, at least kAmxRows rows, K a multiple of 32 and no x value a bf16 subnormal.
bool takes_amx(const float* x, int64_t M, int64_t K, DType round_to) {
  return round_to == DType::BF16 && M >= kAmxRows && isa_at_least(Isa::Amx) && amx::usable(K) &&
         !avx512::has_bf16_subnormal(x, M * K);
}

// out[:, 0:N) through the AMX GEMM, threads splitting W's rows; W's rows come from `w` a chunk at
// a time. With a fallback, W is checked for bf16 subnormals and rows holding one are computed by
// fallback(n0, n1) instead (no fallback: W cannot hold one). Then the epilogue (bias, rounding).
void linear_amx(const float* x, int64_t M, int64_t K, int64_t N, const amx::WChunkFn& w,
                const std::function<void(int64_t, int64_t)>& fallback, const std::vector<float>& bias,
                DType round_to, float* out, bool pack_order = false) {
  static thread_local std::vector<uint32_t> xp;  // x packed as the AMX B operand
  xp.resize(amx::packed_x_words(M, K));
  uint32_t* xpd = xp.data();
  const int64_t blocks = (M + 15) / 16;  // 16-row blocks, the last zero-padded
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) { amx::pack_x(x, M, K, b0, b1, xpd, pack_order); });
  constexpr int64_t kUnit = 32;  // W rows per unit of work
  const int64_t units = (N + kUnit - 1) / kUnit;
  parallel_for(units, 1, [&](int64_t u0, int64_t u1) {
    const int64_t n0 = u0 * kUnit, n1 = std::min(N, u1 * kUnit);
    if (!amx::gemm_rows(xpd, M, K, w, n0, n1 - n0, out + n0, N, bool(fallback))) fallback(n0, n1);
    epilogue(out, M, N, n0, n1, bias, round_to);
  });
}

// Units of work per task: at least ~64K multiply-adds, so small ops stay on one thread.
int64_t grain_for(int64_t unit_macs) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(unit_macs, 1));
}

// ---- portable kernels -------------------------------------------------------------------
// 8 independent lanes so the compiler can vectorize without reassociating a single sum.
float dot_portable(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void gemm_xwt_portable(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                       int64_t ldo) {
  std::vector<float> row(static_cast<size_t>(K));  // [K] one W row widened to f32
  for (int64_t n = 0; n < N; ++n) {
    if (wdt == DType::F32) {
      std::copy_n(reinterpret_cast<const float*>(row_ptr(w, wdt, n, K)), K, row.data());
    } else {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(row_ptr(w, wdt, n, K));
      if (wdt == DType::F16)
        for (int64_t k = 0; k < K; ++k) row[size_t(k)] = f16_to_f32(h[k]);
      else
        for (int64_t k = 0; k < K; ++k) row[size_t(k)] = bf16_to_f32(h[k]);
    }
    for (int64_t m = 0; m < M; ++m) out[m * ldo + n] = dot_portable(x + m * K, row.data(), K);
  }
}

}  // namespace

void gemm_xwt_block(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                    int64_t ldo, bool x_bf16) {
  if (K == 0) {  // empty sums (the blocked kernel's K loop would not touch out)
    for (int64_t m = 0; m < M; ++m) std::fill_n(out + m * ldo, N, 0.0f);
    return;
  }
  const Isa isa = active_isa();
  if (x_bf16 && wdt == DType::BF16 && M >= 1 && M <= 4 && isa >= Isa::Avx512Bf16)
    avx512::gemv_bf16(x, M, K, static_cast<const uint16_t*>(w), N, out, ldo);
  else if (isa >= Isa::Avx512 && M >= kGemmRows)
    avx512::gemm_packed(x, M, K, w, wdt, N, out, ldo, false);
  else if (isa >= Isa::Avx512 && M >= 1 && M <= 4)
    avx512::gemv_dense(x, M, K, w, wdt, N, out, ldo);
  else if (isa >= Isa::Avx512 && M > 4) {
    // 5..23 rows (a server's decode batch): the GEMV, 4 rows of x at a time over a ~64 KB slice
    // of W's rows, which stays in cache for the passes after the first.
    const int64_t slice = std::max<int64_t>(8, (int64_t(1) << 16) / std::max<int64_t>(K * elem_size(wdt), 1));
    for (int64_t n0 = 0; n0 < N; n0 += slice)
      for (int64_t m0 = 0; m0 < M; m0 += 4)
        gemm_xwt_block(x + m0 * K, std::min<int64_t>(4, M - m0), K, row_ptr(w, wdt, n0, K), wdt,
                       std::min(slice, N - n0), out + m0 * ldo + n0, ldo, x_bf16);
  }
  else if (isa >= Isa::Avx2)
    avx2::gemm_xwt_block(x, M, K, w, wdt, N, out, ldo);
  else
    gemm_xwt_portable(x, M, K, w, wdt, N, out, ldo);
}

void dequantize_4bit_range(const uint8_t* packed, const float* absmax, int64_t blocksize, DType quant_type,
                           int64_t e0, int64_t e1, void* out, DType out_dt) {
  const float* code = dequant_table_4bit(quant_type);
  const bool simd = use_avx2_kernels();
  const bool bf16_512 = out_dt == DType::BF16 && blocksize % 32 == 0 && isa_at_least(Isa::Avx512Bf16);
  const int64_t es = elem_size(out_dt);
  auto scalar = [&](int64_t i) {
    uint8_t byte = packed[i / 2];
    uint8_t c = i % 2 == 0 ? byte >> 4 : byte & 0x0f;
    store_from_f32(out, out_dt, i - e0, quant::mul_ftz(code[c], absmax[i / blocksize]));
  };
  // Walk block segments: blocks may straddle rows, so the range is cut at block boundaries.
  for (int64_t i = e0; i < e1;) {
    const int64_t seg_end = std::min(e1, (i / blocksize + 1) * blocksize);
    if (bf16_512) {  // 32 values a step from a multiple of 32 (blocks are whole steps)
      for (; i < seg_end && i % 32 != 0; ++i) scalar(i);
      const int64_t fast = (seg_end - i) / 32 * 32;
      if (fast > 0) {
        avx512::dequantize_4bit_bf16(packed, absmax, blocksize, quant_type, i, fast,
                                     static_cast<uint16_t*>(out) + (i - e0));
        i += fast;
      }
    } else if (simd) {
      if (i % 2) scalar(i++);
      const int64_t fast = (seg_end - i) / 8 * 8;
      if (fast > 0) {
        avx2::dequant_4bit_span(packed, absmax[i / blocksize], quant_type, i, fast,
                                static_cast<char*>(out) + (i - e0) * es, out_dt);
        i += fast;
      }
    }
    for (; i < seg_end; ++i) scalar(i);
  }
}

void gemm_i8_block(const int8_t* a, int64_t M, int64_t K, const int8_t* b, int64_t N, int32_t* out,
                   int64_t ldo) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int8_t* ar = a + m * K;
      const int8_t* br = b + n * K;
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        for (int l = 0; l < 8; ++l) acc[l] += int32_t(ar[k + l]) * int32_t(br[k + l]);
      int32_t s = 0;
      for (int l = 0; l < 8; ++l) s += acc[l];
      for (; k < K; ++k) s += int32_t(ar[k]) * int32_t(br[k]);
      out[m * ldo + n] = s;
    }
}

// ---- whole ops ------------------------------------------------------------------------------

void linear(const float* x_in, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, const void* bias,
            DType bias_dt, DType round_to, float* out) {
  std::vector<float> xbuf;  // [M, K] x rounded to round_to
  const float* x = rounded_input(x_in, M, K, round_to, xbuf);
  const std::vector<float> b = bias_f32(bias, bias_dt, N, round_to);
  if (wdt == DType::BF16 && takes_amx(x, M, K, round_to)) {
    const auto* wh = static_cast<const uint16_t*>(w);
    const auto rows = [&](int64_t r0, int64_t nr, int64_t k0, int64_t kc, uint16_t* dst, int64_t ld) {
      for (int64_t r = 0; r < nr; ++r) std::memcpy(dst + r * ld, wh + (r0 + r) * K + k0, size_t(kc) * 2);
    };
    const auto fallback = [&](int64_t n0, int64_t n1) {
      gemm_xwt_block(x, M, K, row_ptr(w, wdt, n0, K), wdt, n1 - n0, out + n0, N);
    };
    return linear_amx(x, M, K, N, rows, fallback, b, round_to, out);
  }
  const bool x_bf16 = x_is_bf16(x, M, K, round_to);
  constexpr int64_t kUnit = 8;  // output features per unit of work
  const int64_t units = (N + kUnit - 1) / kUnit;
  parallel_for(units, grain_for(kUnit * M * K), [&](int64_t u0, int64_t u1) {
    const int64_t n0 = u0 * kUnit, n1 = std::min(N, u1 * kUnit);
    gemm_xwt_block(x, M, K, row_ptr(w, wdt, n0, K), wdt, n1 - n0, out + n0, N, x_bf16);
    epilogue(out, M, N, n0, n1, b, round_to);
  });
}

void linear_4bit(const float* x_in, int64_t M, int64_t K, const uint8_t* packed, const float* absmax,
                 int64_t blocksize, DType quant_type, int64_t N, const void* bias, DType bias_dt,
                 DType compute_dtype, float* out, const Absmax4* nested) {
  static thread_local std::vector<float> xbuf;  // [M, K] x rounded to the compute dtype
  const float* x = rounded_input(x_in, M, K, compute_dtype, xbuf);
  const std::vector<float> b = bias_f32(bias, bias_dt, N, compute_dtype);
  const Isa isa = active_isa();
  constexpr int64_t kRows = 8;  // GEMV rows per unit of work
  const int64_t gemv_units = (N + kRows - 1) / kRows;
  if (takes_amx(x, M, K, compute_dtype)) {
    // W (and x) in pack order where blocks hold whole 64-value steps: one bf16 table a block and
    // two permutes per 64 weights (vs. f32 lookups, products and conversions per value).
    // (Otherwise dequantize_4bit_range, whose bf16 output takes the AVX512_BF16 kernel too.)
    const bool pack_order = blocksize % 64 == 0 && K % 64 == 0;
    const auto rows = [&](int64_t r0, int64_t nr, int64_t k0, int64_t kc, uint16_t* dst, int64_t ld) {
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t e = (r0 + r) * K + k0;
        if (pack_order)
          avx512::dequantize_4bit_bf16_pack_order(packed, absmax, blocksize, quant_type, e, kc, dst + r * ld);
        else
          dequantize_4bit_range(packed, absmax, blocksize, quant_type, e, e + kc, dst + r * ld, DType::BF16);
      }
    };
    // dequantized 4-bit weights are never bf16 subnormals: no check, so no fallback
    return linear_amx(x, M, K, N, rows, nullptr, b, compute_dtype, out, pack_order);
  }
  // GEMV: decode in registers, no weight buffer. Up to 4 rows of x per pass; 5..23 rows (a
  // server's decode batch, where AMX is not taken) take several passes over each slice of W's
  // rows, which stays in cache between them, instead of dequantizing every weight to a buffer.
  const int64_t gemv_m = std::min<int64_t>(M, 4);
  if (isa >= Isa::Avx512 && M < kGemmRows) {
    static thread_local std::vector<float> xp;  // [M, K] x in the decoder's order (f32 or bf16)
    xp.resize(size_t(M * K));
    bool bf16 = isa >= Isa::Avx512Bf16 && compute_dtype == DType::BF16 &&
                avx512::gemv_4bit_fits(gemv_m, K, blocksize, true);
    if (bf16) bf16 = avx512::gemv_4bit_pack_x(x, M, K, true, xp.data());
    if (bf16 || avx512::gemv_4bit_fits(gemv_m, K, blocksize, false)) {
      if (!bf16) avx512::gemv_4bit_pack_x(x, M, K, false, xp.data());
      const char* xpd = reinterpret_cast<const char*>(xp.data());  // (a thread_local named inside
                                                                    // the lambda would be the worker's)
      const int64_t x_row_bytes = K * (bf16 ? 2 : 4);  // one packed row of x (rows are packed apart)
      const Absmax4 am = nested ? *nested : Absmax4{.f32 = absmax};
      // W rows per pass when M > 4: ~64 KB of packed weights, a multiple of kRows.
      const int64_t slice = std::max<int64_t>(kRows, (int64_t(1) << 17) / std::max<int64_t>(K, 1) / kRows * kRows);
      parallel_for(gemv_units, grain_for(kRows * M * K), [&](int64_t u0, int64_t u1) {
        const int64_t n0 = u0 * kRows, n1 = std::min(N, u1 * kRows);
        for (int64_t s0 = n0; s0 < n1; s0 += M > 4 ? slice : n1 - n0) {
          const int64_t s1 = M > 4 ? std::min(n1, s0 + slice) : n1;
          for (int64_t m0 = 0; m0 < M; m0 += 4)
            avx512::gemv_4bit(xpd + m0 * x_row_bytes, std::min<int64_t>(4, M - m0), K, packed, am, blocksize,
                              quant_type, compute_dtype, bf16, s0, s1 - s0, out + m0 * N + s0, N);
        }
        epilogue(out, M, N, n0, n1, b, compute_dtype);
      });
      return;
    }
  }
  if (M <= 4 && K % 8 == 0 && isa >= Isa::Avx2) {  // the AVX2 decoder
    static thread_local std::vector<float> xp;     // [M, K] in the decoder's weight order
    xp.resize(size_t(M * K));
    avx2::gemv_4bit_pack_x(x, M, K, compute_dtype, xp.data());
    const float* xpd = xp.data();
    parallel_for(gemv_units, grain_for(kRows * M * K), [&](int64_t u0, int64_t u1) {
      const int64_t n0 = u0 * kRows, n1 = std::min(N, u1 * kRows);
      avx2::gemv_4bit(xpd, M, K, packed, absmax, blocksize, quant_type, compute_dtype, n0, n1 - n0, out + n0,
                      N);
      epilogue(out, M, N, n0, n1, b, compute_dtype);
    });
    return;
  }
  // Rows of W dequantized per step: a few for GEMV (buffer in L1/L2), more when many rows of
  // x pass over each chunk; a multiple of 8, and small enough to give every thread work.
  const int64_t target = M < 4 ? (int64_t(1) << 15) : (int64_t(1) << 18);
  int64_t rows = std::clamp<int64_t>(target / std::max<int64_t>(K, 1) / 8 * 8, 8, 256);
  // Prefill: the AVX-512 GEMM packs panels of 256 W rows and runs every row of x over each, so
  // fewer rows per call stream all of x through the caches once more per call (at K = 8192, 32
  // rows a call read x's 16 MB for every 32 rows of W).
  if (M >= kGemmRows && isa >= Isa::Avx512) rows = 256;
  const int64_t per_thread = (N + 2 * num_threads() - 1) / (2 * num_threads());
  rows = std::max<int64_t>(8, std::min(rows, (per_thread + 7) / 8 * 8));
  const int64_t units = (N + rows - 1) / rows;
  const int64_t es = elem_size(compute_dtype);
  const bool x_bf16 = x_is_bf16(x, M, K, compute_dtype);
  parallel_for(units, grain_for(rows * M * K), [&](int64_t u0, int64_t u1) {
    static thread_local std::vector<char> wbuf;  // [rows, K] dequantized weight rows, compute dtype
    wbuf.resize(size_t(rows * K * es));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t r0 = u * rows, r1 = std::min(N, r0 + rows);
      dequantize_4bit_range(packed, absmax, blocksize, quant_type, r0 * K, r1 * K, wbuf.data(),
                            compute_dtype);
      gemm_xwt_block(x, M, K, wbuf.data(), compute_dtype, r1 - r0, out + r0, N, x_bf16);
    }
    epilogue(out, M, N, u0 * rows, std::min(N, u1 * rows), b, compute_dtype);
  });
}

void linear_int8(const float* x, int64_t M, int64_t K, const int8_t* cb, const float* scb, int64_t N,
                 const void* bias, DType bias_dt, float threshold, DType act_dtype, float* out) {
  // 1. A.to(float16), then bitsandbytes' row-wise quantization (outlier columns zeroed).
  static thread_local std::vector<uint16_t> xh;  // [M, K] f16 bits
  static thread_local std::vector<int8_t> ca;    // [M, K]
  static thread_local std::vector<float> sca;    // [M]
  xh.resize(size_t(M * K));
  ca.resize(size_t(M * K));
  sca.resize(size_t(M));
  uint16_t* xhp = xh.data();
  const bool avx512 = isa_at_least(Isa::Avx512);
  parallel_for(M * K, 1 << 16, [&](int64_t b, int64_t e) {
    if (avx512) return avx512::f32_to_f16_rows(x + b, e - b, xhp + b);
    for (int64_t i = b; i < e; ++i) xhp[i] = f32_to_f16(x[i]);
  });
  std::vector<int64_t> outliers;  // outlier column indices
  int8_vectorwise_quant(xh.data(), M, K, threshold, ca.data(), sca.data(), &outliers);
  if (threshold <= 0.0f) outliers.clear();
  const Isa isa = active_isa();
  // AVX512_VNNI comes with the Avx512Bf16 level (isa.h); its int32 sums are exact for K < 2^16.
  const bool vnni = isa >= Isa::Avx512Bf16 && K < (int64_t(1) << 16);
  // AMX (TDPBSSD) from kAmxRowsInt8 rows: the same exact int32 sums.
  const bool amx = vnni && M >= kAmxRowsInt8 && isa >= Isa::Amx && amx::usable_i8(K);
  const bool simd = !vnni && isa >= Isa::Avx2;
  static thread_local std::vector<int16_t> ca16;  // [M, K] widened once for the AVX2 kernel
  static thread_local std::vector<uint8_t> cau;   // [M, K] a + 128 for the VNNI kernel
  static thread_local std::vector<uint32_t> cap4;  // [M, K] packed for the AMX kernel
  if (simd) ca16.assign(ca.begin(), ca.end());
  if (amx) {
    cap4.resize(amx::packed_i8_words(M, K));
    uint32_t* dst = cap4.data();
    const int8_t* src = ca.data();
    parallel_for((M + 15) / 16, 1, [&](int64_t b0, int64_t b1) { amx::pack_i8(src, M, K, b0, b1, dst); });
  } else if (vnni) {
    cau.resize(size_t(M * K));
    for (size_t i = 0; i < cau.size(); ++i) cau[i] = uint8_t(ca[i]) ^ 0x80;
  }
  const int16_t* ca16p = ca16.data();
  const uint8_t* caup = cau.data();
  const uint32_t* cap4p = cap4.data();
  const int8_t* cap = ca.data();
  const float* scap = sca.data();

  // Outlier part, in act_dtype: subA = A[:, cols] (the input in its own dtype) and
  // subB = (CB[:, cols] * SCB * (1/127)).to(act_dtype), as int8_mixed_scaled_mm.
  const int64_t n_out = int64_t(outliers.size());
  std::vector<float> sub_a(static_cast<size_t>(M * n_out));  // [M, n_out]
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < n_out; ++c)
      sub_a[size_t(m * n_out + c)] = round_to_dtype(x[m * K + outliers[size_t(c)]], act_dtype);

  // Linear8bitLt casts the bias to x.dtype; int8_mm_dequant fuses an f16 bias into its fma and
  // adds any other after the f16 rounding.
  const bool fused_bias = bias && act_dtype == DType::F16;
  const std::vector<float> bias_v = bias_f32(bias, bias_dt, N, act_dtype);  // [N]
  const bool vec_epilogue = vnni && (act_dtype == DType::F16 || act_dtype == DType::BF16 || act_dtype == DType::F32);
  constexpr int64_t kCols = 64;  // columns per int32 tile
  const int64_t units = (N + kCols - 1) / kCols;
  parallel_for(units, grain_for(kCols * M * K), [&](int64_t u0, int64_t u1) {
    static thread_local std::vector<int32_t> acc;  // [M, kCols] int32 products
    acc.resize(size_t(M * kCols));
    std::vector<float> sub_b(static_cast<size_t>(n_out));  // [n_out] one column of subB
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n0 = u * kCols, nc = std::min(N, n0 + kCols) - n0;
      if (amx)
        amx::gemm_i8_rows(cap4p, M, K, cb + n0 * K, nc, acc.data(), kCols);
      else if (vnni)
        avx512::gemm_i8_block(caup, M, K, cb + n0 * K, nc, acc.data(), kCols);
      else if (simd)
        avx2::gemm_i8_block(ca16p, M, K, cb + n0 * K, nc, acc.data(), kCols);
      else
        gemm_i8_block(cap, M, K, cb + n0 * K, nc, acc.data(), kCols);
      if (vec_epilogue)
        avx512::int8_dequant_rows(acc.data(), kCols, M, nc, scap, scb + n0, bias ? bias_v.data() + n0 : nullptr,
                                  fused_bias, act_dtype, out + n0, N);
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t n = n0 + j;
        if (vec_epilogue && n_out == 0) break;
        // kdequant_mm_int32_fp16 (built with fast math: ftz): fmaf(v * SCA * SCB, 1/127^2, bias)
        const float bias_h = fused_bias ? bias_v[size_t(n)] : 0.0f;
        for (int64_t c = 0; c < n_out; ++c)
          sub_b[size_t(c)] = round_to_dtype(
              float(cb[n * K + outliers[size_t(c)]]) * scb[n] * 7.874015718698502e-3f, act_dtype);
        for (int64_t m = 0; m < M; ++m) {
          float v;
          if (vec_epilogue) {
            v = out[m * N + n];
          } else {
            float p = quant::mul_ftz(quant::mul_ftz(float(acc[size_t(m * kCols + j)]), scap[m]), scb[n]);
            v = round_to_dtype(quant::ftz(std::fma(p, 6.200012e-05f, bias_h)), DType::F16);
            if (bias && !fused_bias) v = round_to_dtype(v + bias_v[size_t(n)], DType::F16);  // out.add_(bias)
            v = round_to_dtype(v, act_dtype);                                                // .to(A.dtype)
          }
          if (n_out > 0) {  // output.addmm(subA, subB): f32 accumulation, one rounding
            float s = 0.0f;
            for (int64_t c = 0; c < n_out; ++c) s += sub_a[size_t(m * n_out + c)] * sub_b[size_t(c)];
            v = round_to_dtype(v + s, act_dtype);
          }
          out[m * N + n] = v;
        }
      }
    }
  });
}

}  // namespace nibble::cpu
