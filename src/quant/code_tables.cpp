// The code tables of the bitsandbytes formats (code -> value).
#include <array>

#include "nibble/error.h"
#include "nibble/quant.h"

namespace nibble {

const std::array<float, 16>& nf4_code() {
  static const std::array<float, 16> t = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
      0.7229568362236023f, 1.0f};
  return t;
}

// FP4 (E2M1, bias 3, scaled so the largest magnitude is 1): bit 3 is the sign, so codes
// 8..15 are the negatives of 0..7. Magnitudes by bit pattern: 0, 0.0625, 8, 12, 4, 6, 2, 3
// (divided by 12) — the same float constants bitsandbytes' dequantization table uses.
// Code 8 is +0.0 in the serialized quant_map (Python's -0 is the integer 0) but -0.0 when
// the kernel dequantizes (magnitude times -1): fp4_dequant_code() has the kernel's values.
const std::array<float, 16>& fp4_code() {
  static const std::array<float, 16> t = [] {
    std::array<float, 16> r = fp4_dequant_code();
    r[8] = 0.0f;
    return r;
  }();
  return t;
}

const std::array<float, 16>& fp4_dequant_code() {
  static const std::array<float, 16> t = [] {
    const float mag[8] = {0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f};
    std::array<float, 16> r{};
    for (int i = 0; i < 8; ++i) {
      r[size_t(i)] = mag[i];
      r[size_t(i + 8)] = -mag[i];
    }
    return r;
  }();
  return t;
}

const std::array<float, 256>& dynamic_map_signed() {
  static const std::array<float, 256> t = {
#include "quant/dynamic_map.inc"
  };
  return t;
}

const float* code_table_4bit(DType quant_type) {
  if (quant_type == DType::NF4) return nf4_code().data();
  if (quant_type == DType::FP4) return fp4_code().data();
  throw UnsupportedError(detail::str("4-bit code table: ", dtype_name(quant_type), " is not nf4 or fp4"));
}

const float* dequant_table_4bit(DType quant_type) {
  if (quant_type == DType::NF4) return nf4_code().data();
  if (quant_type == DType::FP4) return fp4_dequant_code().data();
  throw UnsupportedError(detail::str("4-bit code table: ", dtype_name(quant_type), " is not nf4 or fp4"));
}

bool valid_blocksize_4bit(int64_t blocksize) {
  return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

}  // namespace nibble
