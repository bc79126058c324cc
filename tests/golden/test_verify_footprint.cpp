// Footprint arithmetic from a config alone against transformers: bloom-1b7's fp16 / 4-bit and
// fp16 / 8-bit get_memory_footprint ratios that transformers' own tests expect, every fixture
// model's reference footprints (fp32, nf4 + double quant, fp4, int8), and the bits per
// parameter of the quantized layers (4.5 for NF4 at blocksize 64, ~4.127 with double quant).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/verify.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

TEST(VerifyFootprint, Bloom1b7RatiosAsTransformersTests) {
  ModelConfig c = ModelConfig::from_file(test::fixtures_root() / "configs/bloom-1b7/config.json");
  BitsAndBytesConfig q4{.load_in_4bit = true};
  BitsAndBytesConfig q8{.load_in_8bit = true};
  FootprintReport f4 = footprint_from_config(c, q4), f8 = footprint_from_config(c, q8);
  FootprintReport f16 = footprint_from_config(c, std::nullopt);
  EXPECT_NEAR(f4.ratio_vs_16bit, 2.109659552692574, 1e-5);
  EXPECT_NEAR(f8.ratio_vs_16bit, 1.540025, 1e-5);
  EXPECT_EQ(f4.footprint_16bit_bytes, f16.footprint_bytes);
  EXPECT_DOUBLE_EQ(f16.ratio_vs_16bit, 1.0);
  std::printf("[ bloom-1b7 ] 16-bit %lld B, 4-bit %lld B (ratio %.9f), 8-bit %lld B (ratio %.9f)\n",
              static_cast<long long>(f16.footprint_bytes), static_cast<long long>(f4.footprint_bytes),
              f4.ratio_vs_16bit, static_cast<long long>(f8.footprint_bytes), f8.ratio_vs_16bit);
}

TEST(VerifyFootprint, BitsPerParameter) {
  ModelConfig c = ModelConfig::from_file(test::fixtures_root() / "configs/bloom-1b7/config.json");
  BitsAndBytesConfig nf4{.load_in_4bit = true, .bnb_4bit_quant_type = "nf4"};
  BitsAndBytesConfig dq = nf4;
  dq.bnb_4bit_use_double_quant = true;
  FootprintReport a = footprint_from_config(c, nf4), b = footprint_from_config(c, dq);
  // Per block of 64: 32 packed bytes + a 4-byte absmax (4.5 bits); double quant: a 1-byte
  // absmax + 4 bytes per 256 blocks (4 + 8/64 + 32/16384 = 4.127); the per-layer code tables
  // add well under 0.001 bit at these sizes.
  EXPECT_NEAR(a.bits_per_param, 4.5, 1e-3);
  EXPECT_NEAR(b.bits_per_param, 4.0 + 8.0 / 64 + 32.0 / (64 * 256), 1e-3);
  EXPECT_GT(a.true_bytes, a.footprint_bytes);
  EXPECT_LT(b.true_bytes, a.true_bytes);
  std::printf("[ bits/param ] nf4 %.5f, nf4 + double quant %.5f\n", a.bits_per_param, b.bits_per_param);
}

TEST(VerifyFootprint, FixtureFootprintsFromConfigAndLoaded) {
  for (const auto& dir : test::fixture_model_dirs("reference.json")) {
    SCOPED_TRACE(dir.filename().string());
    std::ifstream f(dir / "reference.json");
    nlohmann::json refj = nlohmann::json::parse(f);
    ModelConfig c = ModelConfig::from_file(dir / "fp32/config.json");
    EXPECT_EQ(footprint_from_config(c, std::nullopt, DType::F32).footprint_bytes,
              refj.at("fp32_footprint").get<int64_t>());
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(variant);
      BitsAndBytesConfig qc = BitsAndBytesConfig::from_config_json(dir / variant / "config.json");
      FootprintReport fr = footprint_from_config(c, qc, DType::F32);
      EXPECT_EQ(fr.footprint_bytes, refj.at(std::string(variant) + "_footprint").get<int64_t>());
      // The loaded model's true bytes and bits per parameter agree with the arithmetic.
      CausalLM model = AutoModelForCausalLM::from_pretrained(dir / variant);
      VerifyOptions o;
      o.round_trip = false;
      VerifyReport r = verify(model, o);
      EXPECT_EQ(r.footprint.footprint_bytes, fr.footprint_bytes);
      EXPECT_EQ(r.footprint.true_bytes, fr.true_bytes);
      EXPECT_EQ(r.footprint.params_quantized, fr.params_quantized);
      EXPECT_DOUBLE_EQ(r.footprint.bits_per_param, fr.bits_per_param);
    }
  }
}
