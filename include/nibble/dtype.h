// DType: every element type nibble handles, described by one traits table (name, safetensors
// spelling, torch spelling, bits per element, kind), plus exact scalar conversions between
// f32 and the 16-bit/8-bit float formats (round to nearest even; NaN, inf, subnormals right).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace nibble {

enum class DType : uint8_t {
  F64, F32, F16, BF16, I64, I32, I16, I8, U8, Bool, F8_E4M3, F8_E5M2,
  // Packed 4-bit kinds: two codes per byte, first value in the high nibble (bitsandbytes).
  NF4, FP4,
};
inline constexpr int kNumDTypes = 14;

enum class DTypeKind : uint8_t { Float, SignedInt, UnsignedInt, Bool, Packed4 };

struct DTypeTraits {
  DType dtype;
  const char* name;         // nibble's short name: "f32", "bf16", "nf4"
  const char* safetensors;  // "F32", "BF16", ... ; nullptr when safetensors has no spelling
  const char* torch;        // "float32", "bfloat16", ... (as transformers writes dtypes)
  int bits;                 // bits per element (4 for the packed kinds)
  DTypeKind kind;
};

const DTypeTraits& traits(DType t);
inline const char* dtype_name(DType t) { return traits(t).name; }
inline int dtype_bits(DType t) { return traits(t).bits; }
inline bool is_float(DType t) { return traits(t).kind == DTypeKind::Float; }
// Bytes taken by n elements (packed kinds round up to whole bytes).
inline int64_t dtype_nbytes(DType t, int64_t n) { return (n * traits(t).bits + 7) / 8; }

std::optional<DType> dtype_from_safetensors(std::string_view s);
// Accepts "float32", "torch.float32", "fp32", "bf16", ... as a user would write them.
std::optional<DType> dtype_from_torch(std::string_view s);

// ---- exact scalar conversions -------------------------------------------------------------
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// bf16: the upper half of an f32. Rounding to nearest even; NaN stays a (quiet) NaN.
inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // quiet NaN, sign kept
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// IEEE binary16.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// v rounded to dt (BF16, F16; any other dtype: unchanged), as torch's cast to that dtype.
inline float round_to_dtype(float v, DType dt) {
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  if (dt == DType::F16) return f16_to_f32(f32_to_f16(v));
  return v;
}

// FP8 (OCP): E4M3 "fn" (no inf, 0x7f/0xff NaN, max 448) and E5M2 (IEEE-like), as torch converts.
float f8e4m3_to_f32(uint8_t v);
float f8e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);  // round to nearest even; |f| >= 480 or NaN -> NaN (0x7f), as torch
uint8_t f32_to_f8e5m2(float f);  // round to nearest even, overflow to inf

// Reads element i of a buffer of dtype t as f32 (float kinds and integer kinds; not packed).
float load_as_f32(const void* data, DType t, int64_t i);
// Writes v into element i of a buffer of dtype t (float kinds; integers by rounding).
void store_from_f32(void* data, DType t, int64_t i, float v);

}  // namespace nibble
