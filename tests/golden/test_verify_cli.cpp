// The built `nibble` binary: `inspect --config-only` reproduces transformers' bloom-1b7 ratios,
// `inspect MODEL --json` the fixture footprints, and `verify` exits 0 when every check passes,
// 1 when one fails, 2 on an error, with the documented JSON shape.
#include <gtest/gtest.h>


#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "nibble/model.h"
#include "cli_run.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

using test::CliRun;
using test::nibble_cli;
using test::q;

nlohmann::json reference_json(const fs::path& dir) {
  std::ifstream f(dir / "reference.json");
  return nlohmann::json::parse(f);
}

}  // namespace

TEST(VerifyCli, InspectConfigOnlyBloomRatios) {
  fs::path cfg = test::fixtures_root() / "configs/bloom-1b7/config.json";
  CliRun r4 = nibble_cli("inspect --config-only " + q(cfg) + " --load-in-4bit --json");
  ASSERT_EQ(r4.rc, 0) << r4.out;
  auto j4 = nlohmann::json::parse(r4.out);
  EXPECT_NEAR(j4.at("ratio_vs_16bit").get<double>(), 2.109659552692574, 1e-5);
  EXPECT_EQ(
      j4.at("footprint_16bit_bytes").get<int64_t>(),
      std::llround(j4.at("ratio_vs_16bit").get<double>() * double(j4.at("footprint_bytes").get<int64_t>())));
  CliRun r8 = nibble_cli("inspect --config-only " + q(cfg) + " --load-in-8bit --json");
  ASSERT_EQ(r8.rc, 0) << r8.out;
  EXPECT_NEAR(nlohmann::json::parse(r8.out).at("ratio_vs_16bit").get<double>(), 1.540025, 1e-5);
  EXPECT_EQ(nibble_cli("inspect --config-only /nonexistent/config.json --json").rc, 2);
}

TEST(VerifyCli, InspectModelFootprints) {
  fs::path dir = test::fixtures_root() / "models/llama";
  nlohmann::json refj = reference_json(dir);
  CliRun r = nibble_cli("inspect " + q(dir / "fp32") +
                        " --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant --json");
  ASSERT_EQ(r.rc, 0);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("footprint_bytes").get<int64_t>(), refj.at("nf4_dq_footprint").get<int64_t>());
  const auto& mods = refj.at("nf4_dq_modules");
  // Every module listed has transformers' class; every Linear of transformers' tree is listed
  // (the tree also has parameterless leaves: activations, the rotary embedding).
  std::set<std::string> listed;
  for (const auto& m : j.at("modules")) {
    ASSERT_TRUE(mods.contains(m.at("name").get<std::string>())) << m.dump();
    EXPECT_EQ(m.at("class"), mods.at(m.at("name").get<std::string>())) << m.dump();
    listed.insert(m.at("name").get<std::string>());
  }
  for (const auto& [name, klass] : mods.items())
    if (klass.get<std::string>().starts_with("Linear")) {
      EXPECT_TRUE(listed.count(name)) << name;
    }
  CliRun t = nibble_cli("inspect " + q(dir / "int8") + " --tensors --json");
  ASSERT_EQ(t.rc, 0);
  EXPECT_GT(nlohmann::json::parse(t.out).at("tensors").size(), 0u);
}

TEST(VerifyCli, VerifyExitCodesAndJson) {
  fs::path dir = test::fixtures_root() / "models/llama";
  nlohmann::json refj = reference_json(dir);
  const std::string ids = "--prompt-ids 1,17,42,99,3,250,7,11";
  // 0: a pre-quantized folder against its fp32 original.
  CliRun ok =
      nibble_cli("verify " + q(dir / "nf4_dq") + " --reference " + q(dir / "fp32") + " " + ids + " --json");
  ASSERT_EQ(ok.rc, 0) << ok.out;
  auto j = nlohmann::json::parse(ok.out);
  ASSERT_TRUE(j.at("checks").is_array());
  std::set<std::string> names;
  for (const auto& c : j.at("checks")) {
    EXPECT_TRUE(c.at("name").is_string());
    EXPECT_TRUE(c.at("passed").get<bool>()) << c.dump();
    EXPECT_TRUE(c.at("detail").is_string());
    names.insert(c.at("name").get<std::string>());
  }
  for (const char* n : {"footprint", "layer_types", "weight_dtypes", "configuration", "generation",
                        "round_trip", "layer_error"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_EQ(j.at("footprint").at("footprint_bytes").get<int64_t>(),
            refj.at("nf4_dq_footprint").get<int64_t>());
  EXPECT_TRUE(j.at("footprint").contains("ratio_vs_16bit"));
  EXPECT_EQ(j.at("layers").size(), 15u);
  // The table form passes too.
  CliRun table = nibble_cli("verify " + q(dir / "fp32") + " --load-in-8bit " + ids);
  EXPECT_EQ(table.rc, 0) << table.out;
  EXPECT_NE(table.out.find("PASS  layer_types"), std::string::npos) << table.out;

  // 1: expected outputs that do not hold the real continuation.
  test::TempDir tmp;
  std::ofstream(tmp / "expected.txt") << "1 17 42 99 3 250 7 11 0 0 0 0 0 0 0 0 0 0\n";
  CliRun bad = nibble_cli("verify " + q(dir / "nf4_dq") + " " + ids + " --expected-outputs " +
                          q(tmp / "expected.txt") + " --json");
  ASSERT_EQ(bad.rc, 1) << bad.out;
  const nlohmann::json bad_report = nlohmann::json::parse(bad.out);  // outlives the loop
  for (const auto& c : bad_report.at("checks"))
    EXPECT_EQ(c.at("passed").get<bool>(), c.at("name") != "generation") << c.dump();
  // 1: an unquantized model is not verified as quantized.
  EXPECT_EQ(nibble_cli("verify " + q(dir / "fp32") + " " + ids).rc, 1);

  // 2: errors — missing folder, bad flags, text without a tokenizer, bad ids.
  EXPECT_EQ(nibble_cli("verify /nonexistent/model").rc, 2);
  EXPECT_EQ(nibble_cli("verify " + q(dir / "nf4_dq") + " --no-such-flag").rc, 2);
  EXPECT_EQ(nibble_cli("verify " + q(dir / "nf4_dq") + " --prompt 'Hello'").rc, 2);
  EXPECT_EQ(nibble_cli("verify " + q(dir / "nf4_dq") + " --prompt-ids 1,x").rc, 2);
  EXPECT_EQ(nibble_cli("verify " + q(dir / "nf4_dq") + " --reference " + q(dir / "int8") + " " + ids).rc, 2);
}
