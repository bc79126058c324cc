// CPU backend of the linear ops (dense f32/f16/bf16, bitsandbytes 4-bit, LLM.int8). The
// main idea: every variant is out[M, n-range] = x · W[n-range]^T computed per thread on a
// contiguous range of output features, so W is streamed from memory once per call whatever M
// is. Inner kernels by shape (AVX2+FMA+F16C, picked at run time; a portable C++ fallback):
//   M < 24   register tiles of dot products along K over W's rows as stored (GEMV at M = 1;
//            with AVX-512, 4 rows of x at a time over a slice of W that stays in cache);
//   M >= 24  a packed GEMM (W panels widened and transposed once, 6 x 16 register tile);
//   4-bit, M <= 4 (AVX-512: M < 24, 4 rows of x per pass over a cached slice of W): weights
//            decoded in registers by table lookup (no buffer);
//   4-bit, larger M: a few rows dequantized into a thread-local compute-dtype buffer, then
//            the dense kernels;
//   AMX (where the OS grants tiles), from 8 rows: bf16 compute (4-bit, or bf16 weights with
//            bf16 rounding) and LLM.int8: the weight dequantized to bf16 (or copied) in chunks and
//            multiplied on tiles (gemm_amx.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "nibble/dtype.h"
#include "quant/gpu_float.h"

namespace nibble::cpu {

// The SIMD kernels of this file and nn_cpu.h run at the level of isa.h's active_isa();
// use_avx2_kernels() is active_isa() >= Avx2. set_portable_kernels(true) caps the level at
// scalar (tests check the portable kernels on the same machine), false lifts the cap.
bool use_avx2_kernels();
void set_portable_kernels(bool on);

// The absmax of 4-bit blocks as the in-register GEMV reads it: the f32 values, or (q set)
// bitsandbytes' double quantization decoded per block -- mul_ftz(code[q[b]], absmax2[b / 256])
// + offset, exactly dequantize_absmax's value -- so decode reads 1 byte per block, not 4.
struct Absmax4 {
  const float* f32 = nullptr;
  const uint8_t* q = nullptr;
  const float* absmax2 = nullptr;  // [ceil(n_blocks / 256)]
  const float* code = nullptr;     // the 256 values of the signed dynamic map
  float offset = 0.0f;
  float operator[](int64_t b) const { return q ? quant::mul_ftz(code[q[b]], absmax2[b >> 8]) + offset : f32[b]; }
};

// ---- whole ops (threaded; pointers are contiguous host buffers) -----------------------------
// out[M, N] = round(round(x) · W^T + round(bias)), rounding to round_to (F32: none). W: [N, K]
// of wdt (f32/f16/bf16); bias: [N] of bias_dt or nullptr.
void linear(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, const void* bias,
            DType bias_dt, DType round_to, float* out);

// The same with a packed 4-bit weight ([N, K] flattened; absmax f32 per block of the
// flattened tensor), dequantized to compute_dtype exactly as bitsandbytes' dequantize_4bit.
// nested: the same absmax double-quantized (nested blocksize 256), read by the decode GEMV.
void linear_4bit(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax,
                 int64_t blocksize, DType quant_type, int64_t N, const void* bias, DType bias_dt,
                 DType compute_dtype, float* out, const Absmax4* nested = nullptr);

// LLM.int8 (bitsandbytes MatMul8bitLt inference). act_dtype is the dtype of the activations
// in the model (A.dtype in bitsandbytes): the f16 result of the int8 part is converted to it
// and the outlier part is computed in it. See nn_ops.h.
void linear_int8(const float* x, int64_t M, int64_t K, const int8_t* cb, const float* scb, int64_t N,
                 const void* bias, DType bias_dt, float threshold, DType act_dtype, float* out);

// ---- building blocks (single-threaded unless noted) ----------------------------------------
// out[m * ldo + n] = sum_k x[m * K + k] * w[n * K + k] for m < M, n < N (w: N rows of wdt),
// f32 accumulation. x_bf16: x holds bf16 values, none of them subnormal (lets bf16 weights go
// through AVX512_BF16's exact products).
void gemm_xwt_block(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                    int64_t ldo, bool x_bf16 = false);
// Elements [e0, e1) of a flattened 4-bit tensor, each quant_map[code] * absmax[i / blocksize]
// in f32 (flush-to-zero, as the reference) then rounded to out_dt; out[0] is element e0.
void dequantize_4bit_range(const uint8_t* packed, const float* absmax, int64_t blocksize, DType quant_type,
                           int64_t e0, int64_t e1, void* out, DType out_dt);
// out[m * ldo + n] = sum_k a[m * K + k] * b[n * K + k] in int32 (exact).
void gemm_i8_block(const int8_t* a, int64_t M, int64_t K, const int8_t* b, int64_t N, int32_t* out,
                   int64_t ldo);

namespace avx2 {
// M >= 24 rows go to gemm_packed (W widened and transposed panel by panel), fewer to
// register tiles of dot products over W's rows.
void gemm_xwt_block(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                    int64_t ldo);
void gemm_packed(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out,
                 int64_t ldo);
// count values from element e (even; count a multiple of 8), all in one block (one absmax).
void dequant_4bit_span(const uint8_t* packed, float absmax, DType quant_type, int64_t e, int64_t count,
                       void* out, DType out_dt);
// out[m * ldo + r] = x[m] . dequant(row r0 + r) for m < M (1..4), r < nrows, the 4-bit rows
// decoded in registers (values as dequantize_4bit_range to compute_dtype). K % 8 == 0; xp is
// x [M, K] rearranged by gemv_4bit_pack_x (the order the decoder produces weights in).
void gemv_4bit_pack_x(const float* x, int64_t M, int64_t K, DType compute_dtype, float* xp);
void gemv_4bit(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax,
               int64_t blocksize, DType quant_type, DType compute_dtype, int64_t r0, int64_t nrows,
               float* out, int64_t ldo);
// a16: the int8 activations widened to int16 ([M, K]).
void gemm_i8_block(const int16_t* a16, int64_t M, int64_t K, const int8_t* b, int64_t N, int32_t* out,
                   int64_t ldo);
}  // namespace avx2

namespace avx512 {
// The packed GEMM for many rows (gemm_avx512.cpp): AVX-512 FMA, or with bf16 (x_bf16 as
// gemm_xwt_block's, wdt BF16, AVX512_BF16 present) vdpbf16ps.
void gemm_packed(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out, int64_t ldo,
                 bool bf16);
// out[m * ldo + r] = x[m] . w[r] for r < N, M <= 4, W f32/f16/bf16 widened to f32 (linear_avx512.cpp).
void gemv_dense(const float* x, int64_t M, int64_t K, const void* w, DType wdt, int64_t N, float* out, int64_t ldo);
// out[m * ldo + r] = x[m] . w[r] for r < N, M <= 4, with vdpbf16ps (linear_avx512.cpp); x
// as gemm_xwt_block's x_bf16.
void gemv_bf16(const float* x, int64_t M, int64_t K, const uint16_t* w, int64_t N, float* out, int64_t ldo);
// y[i] = x[i] rounded to dt (BF16, F16 or F32: a copy), i < n; y may be x.
void round_into(const float* x, float* y, int64_t n, DType dt);
// o[i] = round_dt(o[i] + bias[i]) (bias nullptr: no add), i < n.
void add_round(float* o, const float* bias, int64_t n, DType dt);
// Whether some x[i] (i < n), read as bf16 (its high 16 bits), is a subnormal.
bool has_bf16_subnormal(const float* x, int64_t n);
// The in-register 4-bit GEMV (linear4_avx512.cpp). bf16: the AVX512_BF16 kernel (compute dtype
// bf16 only), else the f32-table kernel (any compute dtype). fits: the shape it takes (M <= 4,
// K and blocksize multiples of 32, or 64 for bf16). pack_x: x [M, K] (already rounded to the
// compute dtype) into the decoder's order, f32 or bf16 ([M, K] either way); false if bf16 and
// some x is a bf16 subnormal (vdpbf16ps would read it as zero: use the f32 kernel then).
bool gemv_4bit_fits(int64_t M, int64_t K, int64_t blocksize, bool bf16);
// The bf16 dequantization (values exactly dequantize_4bit's) of count values from element begin
// (begin, count and blocksize multiples of 64; absmax f32 per block) in pack order: of each 64,
// the 32 even elements then the 32 odd ones, decoded by one bf16 table per block (AVX512_BF16).
void dequantize_4bit_bf16_pack_order(const uint8_t* packed, const float* absmax, int64_t blocksize,
                                     DType quant_type, int64_t begin, int64_t count, uint16_t* out);
bool gemv_4bit_pack_x(const float* x, int64_t M, int64_t K, bool bf16, void* xp);
// out[m * ldo + r] = x[m] . dequant(row r0 + r), r < nrows.
void gemv_4bit(const void* xp, int64_t M, int64_t K, const uint8_t* packed, const Absmax4& absmax,
               int64_t blocksize, DType quant_type, DType compute_dtype, bool bf16, int64_t r0, int64_t nrows,
               float* out, int64_t ldo);

// LLM.int8 with AVX512_VNNI (linear8_avx512.cpp). au: the int8 activations as unsigned bytes
// a + 128 ([M, K], K < 2^16); out[m * ldo + n] = sum_k a[m, k] * b[n, k] exactly.
void gemm_i8_block(const uint8_t* au, int64_t M, int64_t K, const int8_t* b, int64_t N, int32_t* out,
                   int64_t ldo);
// out[m * ldo + j] (j < nc) = the int8 part of linear_int8's output for acc[m * lda + j]: the
// f16 dequantization with SCA sca[m], SCB scb[j], bias[j] (act-dtype-rounded; nullptr: none)
// fused into the fma when fused_bias, else added after the f16 rounding; then rounded to
// act_dtype (F16, BF16 or F32).
void int8_dequant_rows(const int32_t* acc, int64_t lda, int64_t M, int64_t nc, const float* sca, const float* scb,
                       const float* bias, bool fused_bias, DType act_dtype, float* out, int64_t ldo);
}  // namespace avx512

namespace amx {
// The AMX bf16 GEMM (gemm_amx.cpp), for isa.h's Amx level, x and W holding bf16 values and
// no x value a bf16 subnormal. usable: the shapes it takes (K a multiple of 32).
bool usable(int64_t K);
// x [M, K] packed as TDPBF16PS' B operand, [ceil(M / 16)][K / 2][16] bf16 pairs (rows past M
// zero); pack_x writes the 16-row blocks [b0, b1) (threads may split the blocks). pack_order:
// each 64 values of a row taken as the 32 even ones then the 32 odd ones (K % 64 == 0), the
// order dequantize_4bit_bf16_pack_order writes W in (the dot products are the same).
size_t packed_x_words(int64_t M, int64_t K);
void pack_x(const float* x, int64_t M, int64_t K, int64_t b0, int64_t b1, uint32_t* xp,
            bool pack_order = false);
// Writes W's rows [r0, r0 + nr) x columns [k0, k0 + kc) as bf16: row r at dst + r * ld.
using WChunkFn =
    std::function<void(int64_t r0, int64_t nr, int64_t k0, int64_t kc, uint16_t* dst, int64_t ld)>;
// out[m * ldo + r] = sum_k x[m, k] * W[r0 + r, k] for m < M, r < nr (one thread), f32 sums.
// w_may_be_subnormal: each W chunk is checked, and the call returns false when a value of these
// rows is a bf16 subnormal (TDPBF16PS would read it as zero): out's columns are then partly
// written and the caller computes them another way. Dequantized 4-bit weights never are (the
// products are flushed to zero, and a normal f32 rounds to a normal bf16): no check needed.
bool gemm_rows(const uint32_t* xp, int64_t M, int64_t K, const WChunkFn& w, int64_t r0, int64_t nr,
               float* out, int64_t ldo, bool w_may_be_subnormal = true);
// LLM.int8's int8 products with TDPBSSD (exact int32 sums, as the VNNI kernel's): a [M, K]
// int8 packed by pack_i8 ([ceil(M / 16)][K / 4][16] groups of 4 values, rows past M zero);
// out[m * ldo + r] = sum_k a[m, k] * w[r, k] for r < nr (w: nr rows of K). K % 64 == 0.
bool usable_i8(int64_t K);
size_t packed_i8_words(int64_t M, int64_t K);
void pack_i8(const int8_t* a, int64_t M, int64_t K, int64_t b0, int64_t b1, uint32_t* ap);
void gemm_i8_rows(const uint32_t* ap, int64_t M, int64_t K, const int8_t* w, int64_t nr, int32_t* out,
                  int64_t ldo);
}  // namespace amx

}  // namespace nibble::cpu
