// Enqueue-only forms of the CUDA quantization ops (quant_cuda.h), for callers that batch work
// on a stream or time kernels with events (bench/quant_gpu.cpp): same arguments and bytes,
// but nothing waits. `stream` is a cudaStream_t passed as void* so this header needs no CUDA
// headers; nullptr is the legacy default stream. Pointers are device pointers on the current
// device; n == 0 enqueues nothing.
#pragma once

#include <cstdint>

#include "nibble/dtype.h"

namespace nibble::cuda::launch {

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, DType quant_type, uint8_t* packed,
                   float* absmax, void* stream);
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     DType quant_type, void* out, DType out_dt, void* stream);
// offset (nullable, device f32 scalar): quantize x - *offset instead of x (f32 input only).
void quantize_blockwise8(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code,
                         const float* offset, uint8_t* q, float* absmax, void* stream);
void dequantize_blockwise8(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                           int64_t blocksize, void* out, DType out_dt, void* stream);
// *out = torch's CUDA float32 mean of x[0..n) (quant::torch_cuda_mean_f32, 132 SMs), computed
// on the device in the same order; scratch comes from the stream's memory pool.
void torch_mean_f32(const float* x, int64_t n, float* out, void* stream);
// Double quantization with the offset left on the device: *offset = mean(absmax), then
// q [nb] / absmax2 [ceil(nb/256)] = blockwise8(absmax - *offset, 256).
void double_quantize_absmax(const float* absmax, int64_t nb, uint8_t* q, float* absmax2, float* offset,
                            void* stream);
void dequantize_nested_absmax(const uint8_t* q, const float* absmax2, float offset, int64_t nb, float* absmax,
                              void* stream);

}  // namespace nibble::cuda::launch
