// CUDA backend of the quantization ops, declared without CUDA headers. All pointers are
// device pointers on the current device; calls are synchronous with respect to the host
// (they finish before returning) and produce the scalar reference's bytes.
#pragma once

#include <cstdint>

#include "nibble/dtype.h"

namespace nibble::cuda {

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax);
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, DType quant_type,
                     void* out, DType out_dt);
void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                         float* absmax);
void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n, int64_t blocksize,
                           void* out, DType out_dt);
// Double quantization of a device absmax vector: returns the offset (torch's CUDA mean order),
// writes q [nb] and absmax2 [ceil(nb/256)].
float double_quantize_absmax(const float* absmax, int64_t nb, uint8_t* q, float* absmax2);
// absmax[b] = code[q[b]] * absmax2[b / 256] + offset
void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb, float* absmax);
// The 256-entry signed dynamic map, resident on the device.
const float* device_dynamic_map();
// The 16 NF4 or FP4 code values (bitsandbytes' quant_map), resident on the current device.
const float* device_quant_map(DType quant_type);

}  // namespace nibble::cuda
