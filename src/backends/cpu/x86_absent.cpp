// Non-x86-64 builds (CMakeLists.txt leaves out *_avx2.cpp, *_avx512.cpp and *_amx.cpp there):
// the x86 kernels' entry points, declared in linear_cpu.h, nn_cpu.h and quant_cpu.h, as
// InternalErrors. The dispatch in linear_cpu.cpp, nn_cpu.cpp and quant_cpu.cpp calls them only
// above isa.h's Scalar level, which such a target never reaches (detected_isa() is Scalar, and
// set_cpu_isa / NIBBLE_CPU_ISA refuse any other level), so the portable code links unchanged and
// these never run. A kernel added to those headers needs its line here too (the arm64 cross
// build, scripts/cross_arm64.sh, fails to link without it).
#include <cstddef>
#include <cstdint>

#include "backends/cpu/linear_cpu.h"
#include "backends/cpu/nn_cpu.h"
#include "backends/cpu/quant_cpu.h"
#include "nibble/error.h"

namespace nibble::cpu {

namespace {
[[noreturn]] void x86_only(const char* kernel) {
  throw InternalError(detail::str("CPU kernel ", kernel, " reached in a build without x86-64 kernels"));
}
}  // namespace

namespace avx2 {
// linear_cpu.h
void gemm_xwt_block(const float*, int64_t, int64_t, const void*, DType, int64_t, float*, int64_t) {
  x86_only("avx2::gemm_xwt_block");
}
void gemm_packed(const float*, int64_t, int64_t, const void*, DType, int64_t, float*, int64_t) {
  x86_only("avx2::gemm_packed");
}
void dequant_4bit_span(const uint8_t*, float, DType, int64_t, int64_t, void*, DType) {
  x86_only("avx2::dequant_4bit_span");
}
void gemv_4bit_pack_x(const float*, int64_t, int64_t, DType, float*) {
  x86_only("avx2::gemv_4bit_pack_x");
}
void gemv_4bit(const float*, int64_t, int64_t, const uint8_t*, const float*, int64_t, DType, DType, int64_t,
               int64_t, float*, int64_t) {
  x86_only("avx2::gemv_4bit");
}
void gemm_i8_block(const int16_t*, int64_t, int64_t, const int8_t*, int64_t, int32_t*, int64_t) {
  x86_only("avx2::gemm_i8_block");
}
// nn_cpu.h
void qk_dots(const float*, const float*, int64_t, int64_t, int64_t, float*) {
  x86_only("avx2::qk_dots");
}
float scale_max(float*, int64_t, float) {
  x86_only("avx2::scale_max");
}
float exp_sum(float*, int64_t, float) {
  x86_only("avx2::exp_sum");
}
void pv_sum(const float*, const float*, int64_t, int64_t, int64_t, float*) {
  x86_only("avx2::pv_sum");
}
// quant_cpu.h
void quantize_4bit_block(const void*, DType, int64_t, int64_t, DType, uint8_t*, float*) {
  x86_only("avx2::quantize_4bit_block");
}
void dequantize_4bit_run(const uint8_t*, float, int64_t, int64_t, DType, void*, DType) {
  x86_only("avx2::dequantize_4bit_run");
}
void quantize_blockwise8_run(const void*, DType, int64_t, int64_t, const float*, float, uint8_t*) {
  x86_only("avx2::quantize_blockwise8_run");
}
}  // namespace avx2

namespace avx512 {
// linear_cpu.h
void gemm_packed(const float*, int64_t, int64_t, const void*, DType, int64_t, float*, int64_t, bool) {
  x86_only("avx512::gemm_packed");
}
void gemv_dense(const float*, int64_t, int64_t, const void*, DType, int64_t, float*, int64_t) {
  x86_only("avx512::gemv_dense");
}
void gemv_bf16(const float*, int64_t, int64_t, const uint16_t*, int64_t, float*, int64_t) {
  x86_only("avx512::gemv_bf16");
}
void round_into(const float*, float*, int64_t, DType) {
  x86_only("avx512::round_into");
}
void add_round(float*, const float*, int64_t, DType) {
  x86_only("avx512::add_round");
}
bool has_bf16_subnormal(const float*, int64_t) {
  x86_only("avx512::has_bf16_subnormal");
}
bool gemv_4bit_fits(int64_t, int64_t, int64_t, bool) {
  x86_only("avx512::gemv_4bit_fits");
}
void dequantize_4bit_bf16_pack_order(const uint8_t*, const float*, int64_t, DType, int64_t, int64_t,
                                     uint16_t*) {
  x86_only("avx512::dequantize_4bit_bf16_pack_order");
}
bool gemv_4bit_pack_x(const float*, int64_t, int64_t, bool, void*) {
  x86_only("avx512::gemv_4bit_pack_x");
}
void gemv_4bit(const void*, int64_t, int64_t, const uint8_t*, const Absmax4&, int64_t, DType, DType, bool,
               int64_t, int64_t, float*, int64_t) {
  x86_only("avx512::gemv_4bit");
}
void gemm_i8_block(const uint8_t*, int64_t, int64_t, const int8_t*, int64_t, int32_t*, int64_t) {
  x86_only("avx512::gemm_i8_block");
}
void int8_dequant_rows(const int32_t*, int64_t, int64_t, int64_t, const float*, const float*, const float*,
                       bool, DType, float*, int64_t) {
  x86_only("avx512::int8_dequant_rows");
}
// nn_cpu.h
void convert_span(const void*, DType, void*, DType, int64_t) {
  x86_only("avx512::convert_span");
}
void qk_tile(const float*, int64_t, int, int64_t, const float*, int64_t, int64_t, float*, int64_t) {
  x86_only("avx512::qk_tile");
}
void pv_tile(const float*, int64_t, int, const float*, int64_t, int64_t, int64_t, float*, int64_t) {
  x86_only("avx512::pv_tile");
}
// quant_cpu.h
void quantize_4bit_block(const void*, DType, int64_t, int64_t, DType, uint8_t*, float*) {
  x86_only("avx512::quantize_4bit_block");
}
void int8_quant_rows(const uint16_t*, int64_t, int64_t, float, int8_t*, float*, uint8_t*) {
  x86_only("avx512::int8_quant_rows");
}
void f32_to_f16_rows(const float*, int64_t, uint16_t*) {
  x86_only("avx512::f32_to_f16_rows");
}
void dequantize_4bit_bf16(const uint8_t*, const float*, int64_t, DType, int64_t, int64_t, uint16_t*) {
  x86_only("avx512::dequantize_4bit_bf16");
}
}  // namespace avx512

namespace amx {
// linear_cpu.h
bool usable(int64_t) {
  x86_only("amx::usable");
}
size_t packed_x_words(int64_t, int64_t) {
  x86_only("amx::packed_x_words");
}
void pack_x(const float*, int64_t, int64_t, int64_t, int64_t, uint32_t*, bool) {
  x86_only("amx::pack_x");
}
bool gemm_rows(const uint32_t*, int64_t, int64_t, const WChunkFn&, int64_t, int64_t, float*, int64_t, bool) {
  x86_only("amx::gemm_rows");
}
bool usable_i8(int64_t) {
  x86_only("amx::usable_i8");
}
size_t packed_i8_words(int64_t, int64_t) {
  x86_only("amx::packed_i8_words");
}
void pack_i8(const int8_t*, int64_t, int64_t, int64_t, int64_t, uint32_t*) {
  x86_only("amx::pack_i8");
}
void gemm_i8_rows(const uint32_t*, int64_t, int64_t, const int8_t*, int64_t, int32_t*, int64_t) {
  x86_only("amx::gemm_i8_rows");
}
}  // namespace amx

}  // namespace nibble::cpu
