// DType traits and the exact float conversions, checked over every 16-bit pattern against
// an independent wide-precision rounding reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "nibble/dtype.h"

using namespace nibble;

namespace {

// Reference: round a double to the nearest value of a binary format with `man` mantissa bits,
// min normal exponent `emin`, largest finite `max`, nearest-even ties; inf beyond max+half-ulp.
double round_to_format(double x, int man, int emin, double max_finite) {
  if (std::isnan(x) || std::isinf(x)) return x;
  double a = std::fabs(x);
  int e = std::ilogb(a);
  if (a == 0) return x;
  if (e < emin) e = emin;
  double ulp = std::ldexp(1.0, e - man);
  double q = std::nearbyint(a / ulp) * ulp;  // nearbyint: ties to even in default mode
  double half_ulp_max = std::ldexp(1.0, std::ilogb(max_finite) - man - 1);
  if (q > max_finite) q = (a >= max_finite + half_ulp_max) ? INFINITY : max_finite;
  return std::copysign(q, x);
}

}  // namespace

TEST(DType, TraitsTable) {
  for (int i = 0; i < kNumDTypes; ++i) {
    auto t = static_cast<DType>(i);
    EXPECT_EQ(traits(t).dtype, t);
    if (traits(t).safetensors) {
      EXPECT_EQ(dtype_from_safetensors(traits(t).safetensors), t);
    }
    EXPECT_EQ(dtype_from_torch(traits(t).torch), t);
  }
  EXPECT_EQ(dtype_bits(DType::BF16), 16);
  EXPECT_EQ(dtype_nbytes(DType::NF4, 7), 4);
  EXPECT_FALSE(dtype_from_safetensors("F128").has_value());
  EXPECT_EQ(dtype_from_torch("torch.bfloat16"), DType::BF16);
}

TEST(DType, F16ToF32AllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = f16_to_f32(uint16_t(h));
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double expect = e == 0 ? std::ldexp(double(m), -24) : e == 31 ? (m ? NAN : INFINITY)
                                                                   : std::ldexp(double(m | 0x400), int(e) - 25);
    if (h & 0x8000) expect = -expect;
    if (std::isnan(expect)) {
      EXPECT_TRUE(std::isnan(f)) << h;
    } else {
      EXPECT_EQ(double(f), expect) << h;
      EXPECT_EQ(std::signbit(f), bool(h & 0x8000)) << h;
    }
    // and back: every f16 value round-trips exactly, NaN stays NaN
    uint16_t back = f32_to_f16(f);
    if (std::isnan(f)) EXPECT_EQ(back & 0x7c00, 0x7c00) << h;
    else EXPECT_EQ(back, h) << h;
  }
}

TEST(DType, BF16RoundTripAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = bf16_to_f32(uint16_t(h));
    uint32_t u;
    std::memcpy(&u, &f, 4);
    EXPECT_EQ(u, h << 16);
    uint16_t back = f32_to_bf16(f);
    if (std::isnan(f)) EXPECT_TRUE(std::isnan(bf16_to_f32(back))) << h;
    else EXPECT_EQ(back, h) << h;
  }
}

// Every f32 halfway and near-halfway point between consecutive 16-bit values rounds as the
// reference says (this covers all 65,536 patterns' rounding neighbourhoods).
TEST(DType, F32ToF16AndBF16RoundingNeighbourhoods) {
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    double lo = f16_to_f32(uint16_t(h)), hi = f16_to_f32(uint16_t(h + 1));
    for (double t : {0.5, 0.25, 0.75, 0.5 - 1e-7, 0.5 + 1e-7}) {
      float x = float(lo + (hi - lo) * t);
      for (float s : {x, -x}) {
        double want = round_to_format(double(s), 10, -14, 65504.0);
        EXPECT_EQ(double(f16_to_f32(f32_to_f16(s))), want) << "h=" << h << " t=" << t;
      }
    }
  }
  for (uint32_t h = 0; h < 0x7f80; ++h) {
    double lo = bf16_to_f32(uint16_t(h)), hi = bf16_to_f32(uint16_t(h + 1));
    for (double t : {0.5, 0.25, 0.75}) {
      float x = float(lo + (hi - lo) * t);
      double want = round_to_format(double(x), 7, -126, 3.3895313892515355e38);
      EXPECT_EQ(double(bf16_to_f32(f32_to_bf16(x))), want) << "h=" << h << " t=" << t;
    }
  }
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // halfway past max rounds to inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, Fp8AllPatterns) {
  for (uint32_t v = 0; v < 256; ++v) {
    float a = f8e4m3_to_f32(uint8_t(v));
    if ((v & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(a)) << v;
    } else {
      EXPECT_EQ(f32_to_f8e4m3(a), v) << v;
      double want = round_to_format(a, 3, -6, 448.0);
      EXPECT_EQ(double(a), want) << v;
    }
    float b = f8e5m2_to_f32(uint8_t(v));
    if (std::isnan(b)) EXPECT_EQ(f32_to_f8e5m2(b) & 0x7f, 0x7f) << v;
    else EXPECT_EQ(f32_to_f8e5m2(b), v) << v;
  }
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), 0x1p-9f);
  EXPECT_EQ(f8e5m2_to_f32(0x7b), 57344.0f);
  EXPECT_EQ(f32_to_f8e4m3(500.0f), 0x7f);   // torch: out of range is NaN
  EXPECT_EQ(f32_to_f8e5m2(70000.0f), 0x7c);  // inf
}
