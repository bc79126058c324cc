// Scalar reference quantizers: the ground truth every fast kernel (CPU SIMD, CUDA) is tested
// against, themselves tested against bitsandbytes' CUDA outputs in the fixtures. Written for
// clarity, one element at a time, with the exact float operations bitsandbytes' kernels do
// (built with --use_fast_math, see gpu_float.h): scale by the GPU's approximate reciprocal of
// absmax (x * rcp(absmax), not x / absmax) with denormals flushed, then compare with the code
// boundaries using strict ">" (ties go to the lower code).
//
// 4-bit packing (bitsandbytes):
//   byte j = [ code(x[2j]) : 4 | code(x[2j+1]) : 4 ]   (bit 7..4 = even element, 3..0 = odd)
//   an odd element count leaves the low nibble of the last byte 0.
// NF4 code c (0..15) -> nf4_code()[c]; FP4 code = s|e1 e0|m (bit 3 sign, E2M1 magnitude).
#pragma once

#include <cstdint>
#include <vector>

#include "nibble/dtype.h"

namespace nibble::quant::ref {

// Code boundaries: code(x) = number of boundaries strictly below x (NaN -> 0).
inline constexpr float kNf4Boundaries[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
// FP4 magnitude boundaries on |x| and the E2M1 code of each magnitude bin, ascending value.
inline constexpr float kFp4Boundaries[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                            0.4166667f, 0.583333f, 0.8333333f};
inline constexpr uint8_t kFp4BinCode[8] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};

uint8_t quantize_nf4(float x);  // x already scaled to [-1, 1]
uint8_t quantize_fp4(float x);
// Nearest entry of a 256-entry ascending code, bitsandbytes' binary search with midpoint
// rounding (its own tie behaviour, including NaN -> 0).
uint8_t quantize_dynamic(const float* code, float x);

// Blockwise 4-bit: x has n elements of dtype dt (f32/f16/bf16). packed: (n+1)/2 bytes;
// absmax: ceil(n/blocksize) floats.
void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax);
// out: n elements of out_dt; value = code[c] * absmax[i / blocksize] in f32, then rounded.
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, DType quant_type,
                     void* out, DType out_dt);

// Blockwise 8-bit with a 256-entry code (the signed dynamic map).
void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                         float* absmax);
void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n, int64_t blocksize,
                           void* out, DType out_dt);

// Double quantization of a 4-bit absmax vector (f32 [nb]): offset = torch's CUDA mean,
// then 8-bit blockwise (blocksize 256, signed dynamic map) of absmax - offset.
struct NestedAbsmax {
  float offset = 0;
  std::vector<uint8_t> q;         // [nb]
  std::vector<float> absmax2;     // [ceil(nb / 256)]
};
NestedAbsmax double_quantize_absmax(const float* absmax, int64_t nb);
// absmax[b] = code[q[b]] * absmax2[b / 256] + offset, as two f32 operations.
void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb, float* absmax);

// LLM.int8 row-wise: a is f16 [rows, cols]. outlier_cols receives the sorted column indices
// holding any |a| >= threshold (only when threshold > 0).
void int8_vectorwise_quant(const uint16_t* a, int64_t rows, int64_t cols, float threshold, int8_t* ca, float* sca,
                           std::vector<int64_t>* outlier_cols);

}  // namespace nibble::quant::ref
