// CPU backend of the quantization ops: threads over blocks/rows, an AVX2+F16C path chosen at
// run time for the 4-bit kernels, a portable path otherwise. Same signatures and the same
// bytes as the scalar reference (quant/reference.h).
#pragma once

#include <cstdint>
#include <vector>

#include "nibble/dtype.h"

namespace nibble::cpu {

bool has_avx2();  // active_isa() >= Avx2 (isa.h)

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax);
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, DType quant_type,
                     void* out, DType out_dt);
void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                         float* absmax);
void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n, int64_t blocksize,
                           void* out, DType out_dt);
// Double quantization of an absmax vector: returns the offset, fills q [nb], absmax2 [ceil(nb/256)].
float double_quantize_absmax(const float* absmax, int64_t nb, uint8_t* q, float* absmax2);
void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb, float* absmax);
void int8_vectorwise_quant(const uint16_t* a, int64_t rows, int64_t cols, float threshold, int8_t* ca, float* sca,
                           std::vector<int64_t>* outlier_cols);

namespace avx2 {
// One full block (count a multiple of 16, even start) of f32/f16/bf16 input.
void quantize_4bit_block(const void* x, DType dt, int64_t begin, int64_t count, DType quant_type, uint8_t* packed,
                         float* absmax_out);
// count values starting at even index begin (count a multiple of 8), one absmax.
void dequantize_4bit_run(const uint8_t* packed, float absmax, int64_t begin, int64_t count, DType quant_type,
                         void* out, DType out_dt);
// 8-bit dynamic-map codes of count values (a multiple of 8) scaled by inv (one block).
void quantize_blockwise8_run(const void* x, DType dt, int64_t begin, int64_t count, const float* code, float inv,
                             uint8_t* q);
}  // namespace avx2

namespace avx512 {
// As avx2::quantize_4bit_block, count a multiple of 16.
void quantize_4bit_block(const void* x, DType dt, int64_t begin, int64_t count, DType quant_type, uint8_t* packed,
                         float* absmax_out);
// int8_vectorwise_quant's row pass for rows [0, rows) (quant_avx512.cpp): ca, sca, and
// outlier_flags[c] = 1 where some row's |value| >= threshold (> 0; untouched otherwise).
void int8_quant_rows(const uint16_t* a, int64_t rows, int64_t cols, float threshold, int8_t* ca, float* sca,
                     uint8_t* outlier_flags);
// out[i] = f32_to_f16(x[i]), i < n.
void f32_to_f16_rows(const float* x, int64_t n, uint16_t* out);
// dequantize_4bit to bf16 of count values from element begin (AVX512_BF16): begin, count and
// blocksize multiples of 32; out[0] is element begin. Same bits as the reference.
void dequantize_4bit_bf16(const uint8_t* packed, const float* absmax, int64_t blocksize, DType quant_type,
                          int64_t begin, int64_t count, uint16_t* out);
}  // namespace avx512

}  // namespace nibble::cpu
