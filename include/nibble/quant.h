// Quantization formats of bitsandbytes, exactly: NF4/FP4 blockwise 4-bit (optionally with
// double quantization of the absmax), 8-bit blockwise with the signed dynamic map, and
// LLM.int8 row-wise int8. These entry points take tensors on any device and dispatch once on
// (device, dtype) to the CPU (SIMD + threads) or CUDA backend; every backend produces the same
// bytes as the scalar reference in src/quant/reference.h, which matches bitsandbytes' CUDA
// kernels bit for bit.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

// Code tables (code -> value). NF4/FP4: 16 entries; dynamic: 256 entries, ascending.
const std::array<float, 16>& nf4_code();
const std::array<float, 16>& fp4_code();
const std::array<float, 256>& dynamic_map_signed();
const std::array<float, 16>& fp4_dequant_code();  // as fp4_code() but code 8 is -0.0
const float* code_table_4bit(DType quant_type);    // NF4 or FP4, as serialized (quant_map)
const float* dequant_table_4bit(DType quant_type);  // the values dequantization produces

bool valid_blocksize_4bit(int64_t blocksize);  // 32, 64, ..., 4096

// bitsandbytes' QuantState of a 4-bit tensor.
struct QuantState4 {
  DType quant_type = DType::NF4;  // NF4 or FP4
  int64_t blocksize = 64;
  DType dtype = DType::F32;  // dtype of the original (and dequantized) tensor
  Shape shape;               // shape of the original tensor
  Tensor absmax;             // f32 [n_blocks]; u8 [n_blocks] when nested
  bool nested = false;       // double quantization
  float offset = 0.0f;       // nested: mean of the fp32 absmax (torch's CUDA order)
  Tensor nested_absmax;      // nested: f32 [ceil(n_blocks / 256)]
  int64_t nested_blocksize = 256;
  DType nested_dtype = DType::F32;

  int64_t numel() const { return shape_numel(shape); }
  int64_t n_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // Bytes of all quantization state (packed weight excluded).
  int64_t state_bytes() const;
};

struct Quantized4 {
  Tensor packed;  // u8 [(n + 1) / 2, 1]; first value in the high nibble
  QuantState4 state;
};

// x: f32/f16/bf16, any shape, contiguous; on CPU or CUDA (the result stays there).
Quantized4 quantize_4bit(const Tensor& x, DType quant_type, int64_t blocksize = 64, bool double_quant = false);
// Back to state.dtype and state.shape, on the device of `packed`.
Tensor dequantize_4bit(const Tensor& packed, const QuantState4& state);
// The fp32 absmax per block (undoes the double quantization when nested).
Tensor dequantize_absmax(const QuantState4& state);

// 8-bit blockwise with the signed dynamic map (the scheme used for nested absmax, too).
struct QuantizedBlockwise8 {
  Tensor packed;  // u8, same shape as the input
  Tensor absmax;  // f32 [n_blocks]
  int64_t blocksize = 256;
  DType dtype = DType::F32;
};
QuantizedBlockwise8 quantize_blockwise8(const Tensor& x, int64_t blocksize);
Tensor dequantize_blockwise8(const QuantizedBlockwise8& q);

// LLM.int8 row-wise quantization of f16 data [rows, cols] (activations, or weights with
// threshold 0): CA = round(A * 127 / SCA[row]), SCA = row absmax. With threshold > 0, values
// with |a| >= threshold are excluded from SCA and zeroed, their columns listed in outlier_cols
// and zeroed in every row (bitsandbytes' int8_vectorwise_quant).
struct Int8Rowwise {
  Tensor CA;            // i8 [rows, cols]
  Tensor SCA;           // f32 [rows]
  Tensor outlier_cols;  // i64 [k]; undefined when threshold == 0
};
Int8Rowwise int8_vectorwise_quant(const Tensor& a, float threshold = 0.0f);
// CB * SCB / 127 as f32 [rows, cols].
Tensor int8_vectorwise_dequant(const Tensor& cb, const Tensor& scb);

// ---- bitsandbytes state-dict entries (FORMATS.md §2) --------------------------------------
// Keys relative to the weight's name, e.g. "absmax", "quant_map", "nested_absmax",
// "nested_quant_map", "quant_state.bitsandbytes__nf4" (the JSON blob as u8 bytes).
std::map<std::string, Tensor> quant_state_to_dict(const QuantState4& st);
// The inverse; `where` names the weight in error messages. Blocksize, nesting and quant type
// come from the JSON blob. Host tensors.
QuantState4 quant_state_from_dict(const std::map<std::string, Tensor>& d, const std::string& where);
// The quant_state JSON text exactly as bitsandbytes writes it (json.dumps of its dict).
std::string quant_state_json(const QuantState4& st);

}  // namespace nibble
