// The DType traits table and the exact scalar float conversions.
#include "nibble/dtype.h"

#include <cmath>
#include <limits>

#include "nibble/error.h"

namespace nibble {

namespace {
constexpr DTypeTraits kTraits[kNumDTypes] = {
    {DType::F64, "f64", "F64", "float64", 64, DTypeKind::Float},
    {DType::F32, "f32", "F32", "float32", 32, DTypeKind::Float},
    {DType::F16, "f16", "F16", "float16", 16, DTypeKind::Float},
    {DType::BF16, "bf16", "BF16", "bfloat16", 16, DTypeKind::Float},
    {DType::I64, "i64", "I64", "int64", 64, DTypeKind::SignedInt},
    {DType::I32, "i32", "I32", "int32", 32, DTypeKind::SignedInt},
    {DType::I16, "i16", "I16", "int16", 16, DTypeKind::SignedInt},
    {DType::I8, "i8", "I8", "int8", 8, DTypeKind::SignedInt},
    {DType::U8, "u8", "U8", "uint8", 8, DTypeKind::UnsignedInt},
    {DType::Bool, "bool", "BOOL", "bool", 8, DTypeKind::Bool},
    {DType::F8_E4M3, "f8_e4m3", "F8_E4M3", "float8_e4m3fn", 8, DTypeKind::Float},
    {DType::F8_E5M2, "f8_e5m2", "F8_E5M2", "float8_e5m2", 8, DTypeKind::Float},
    {DType::NF4, "nf4", nullptr, "nf4", 4, DTypeKind::Packed4},
    {DType::FP4, "fp4", nullptr, "fp4", 4, DTypeKind::Packed4},
};
static_assert(sizeof(kTraits) / sizeof(kTraits[0]) == kNumDTypes);
}  // namespace

const DTypeTraits& traits(DType t) {
  auto i = static_cast<int>(t);
  NIBBLE_CHECK(i >= 0 && i < kNumDTypes, "bad dtype ", i);
  NIBBLE_CHECK(kTraits[i].dtype == t, "traits table out of order");
  return kTraits[i];
}

std::optional<DType> dtype_from_safetensors(std::string_view s) {
  for (const auto& t : kTraits)
    if (t.safetensors && s == t.safetensors) return t.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_torch(std::string_view s) {
  if (s.starts_with("torch.")) s.remove_prefix(6);
  for (const auto& t : kTraits)
    if (s == t.torch || s == t.name) return t.dtype;
  if (s == "float" || s == "fp32") return DType::F32;
  if (s == "half" || s == "fp16") return DType::F16;
  if (s == "double") return DType::F64;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / NaN (payload kept)
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    // subnormal: value = man * 2^-24, exact in f32
    float v = float(man) * 0x1p-24f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {
    // result is subnormal (or zero) in f16: round a * 2^24 to an integer, nearest even
    if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): zero
    uint32_t e = a >> 23;              // biased f32 exponent, 102..112
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;          // value = m * 2^(e-150); want m * 2^(e-150+24)
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return uint16_t(sign | q);
  }
  // normal: rebias exponent, round mantissa 23 -> 10 bits to nearest even
  uint32_t r = a - 0x38000000u;  // exponent - 112
  r += 0xfffu + ((r >> 13) & 1u);
  return uint16_t(sign | (r >> 13));
}

float f8e4m3_to_f32(uint8_t v) {
  uint32_t sign = v & 0x80u;
  uint32_t exp = (v >> 3) & 0xfu;
  uint32_t man = v & 0x7u;
  float r;
  if (exp == 0xf && man == 0x7) r = std::numeric_limits<float>::quiet_NaN();
  else if (exp == 0) r = float(man) * 0x1p-9f;
  else r = bits_f32(((exp + 120) << 23) | (man << 20));
  return sign ? -r : r;
}

float f8e5m2_to_f32(uint8_t v) { return f16_to_f32(uint16_t(uint16_t(v) << 8)); }

uint8_t f32_to_f8e5m2(float f) {
  // Round the f16 mantissa's low 8 bits away, nearest even, on the f16 bit pattern of f
  // computed without double rounding: do it from f32 directly through a scaled exact path.
  uint32_t u = f32_bits(f);
  uint8_t sign = uint8_t((u >> 24) & 0x80u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | 0x7f);
  float x = bits_f32(a);
  if (x >= 61440.0f) return uint8_t(sign | 0x7c);  // 57344 is max; 61440 is the midpoint to inf
  // Quantize x to the E5M2 grid: find the spacing, then round to nearest even multiple.
  int e;
  std::frexp(x, &e);  // x = m * 2^e, m in [0.5, 1)
  int min_e = -13;    // smallest normal 2^-14 = 0.5 * 2^-13
  if (e < min_e) e = min_e;
  float step = std::ldexp(1.0f, e - 3);  // 2 mantissa bits + implicit: spacing 2^(e-1-2)
  float q = std::nearbyint(x / step);    // exact: x/step is a power-of-two scaling
  float r = q * step;
  return uint8_t(sign | uint8_t(f32_to_f16(r) >> 8));
}

uint8_t f32_to_f8e4m3(float f) {
  uint32_t u = f32_bits(f);
  uint8_t sign = uint8_t((u >> 24) & 0x80u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | 0x7f);
  float x = bits_f32(a);
  if (x >= 480.0f) return uint8_t(sign | 0x7f);  // as torch: beyond the rounding range of 448 is NaN
  int e;
  std::frexp(x, &e);
  int min_e = -5;  // smallest normal 2^-6
  if (e < min_e) e = min_e;
  float step = std::ldexp(1.0f, e - 4);  // 3 mantissa bits
  float r = std::nearbyint(x / step) * step;
  if (r == 0.0f) return sign;
  int re;
  float m = std::frexp(r, &re);  // r = m * 2^re
  if (re - 1 < -6) return uint8_t(sign | uint8_t(std::lround(r * 512.0f)));  // subnormal
  uint32_t exp = uint32_t(re - 1 + 7);
  uint32_t man = uint32_t(std::lround((m * 2.0f - 1.0f) * 8.0f));
  return uint8_t(sign | (exp << 3) | man);
}

float load_as_f32(const void* data, DType t, int64_t i) {
  switch (t) {
    case DType::F64: return float(static_cast<const double*>(data)[i]);
    case DType::F32: return static_cast<const float*>(data)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::I64: return float(static_cast<const int64_t*>(data)[i]);
    case DType::I32: return float(static_cast<const int32_t*>(data)[i]);
    case DType::I16: return float(static_cast<const int16_t*>(data)[i]);
    case DType::I8: return float(static_cast<const int8_t*>(data)[i]);
    case DType::U8:
    case DType::Bool: return float(static_cast<const uint8_t*>(data)[i]);
    case DType::F8_E4M3: return f8e4m3_to_f32(static_cast<const uint8_t*>(data)[i]);
    case DType::F8_E5M2: return f8e5m2_to_f32(static_cast<const uint8_t*>(data)[i]);
    default: throw UnsupportedError(detail::str("load_as_f32: dtype ", dtype_name(t), " is not elementwise"));
  }
}

void store_from_f32(void* data, DType t, int64_t i, float v) {
  switch (t) {
    case DType::F64: static_cast<double*>(data)[i] = v; return;
    case DType::F32: static_cast<float*>(data)[i] = v; return;
    case DType::F16: static_cast<uint16_t*>(data)[i] = f32_to_f16(v); return;
    case DType::BF16: static_cast<uint16_t*>(data)[i] = f32_to_bf16(v); return;
    case DType::F8_E4M3: static_cast<uint8_t*>(data)[i] = f32_to_f8e4m3(v); return;
    case DType::F8_E5M2: static_cast<uint8_t*>(data)[i] = f32_to_f8e5m2(v); return;
    case DType::I64: static_cast<int64_t*>(data)[i] = int64_t(std::nearbyint(v)); return;
    case DType::I32: static_cast<int32_t*>(data)[i] = int32_t(std::nearbyint(v)); return;
    case DType::I16: static_cast<int16_t*>(data)[i] = int16_t(std::nearbyint(v)); return;
    case DType::I8: static_cast<int8_t*>(data)[i] = int8_t(std::nearbyint(v)); return;
    case DType::U8: static_cast<uint8_t*>(data)[i] = uint8_t(std::nearbyint(v)); return;
    case DType::Bool: static_cast<uint8_t*>(data)[i] = v != 0.0f; return;
    default: throw UnsupportedError(detail::str("store_from_f32: dtype ", dtype_name(t), " is not elementwise"));
  }
}

}  // namespace nibble
