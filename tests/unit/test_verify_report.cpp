// VerifyReport's renderings: passed() over the checks, check() lookup, the JSON shape of
// `nibble verify --json` (an error-free layer's infinite SNR written as null) and the table.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "nibble/verify.h"

using namespace nibble;

TEST(VerifyReport, PassedJsonAndTable) {
  VerifyReport r;
  r.checks.push_back({"footprint", true, "300352 B"});
  r.checks.push_back({"layer_types", true, "all Linear4bit"});
  EXPECT_TRUE(r.passed());
  r.footprint.footprint_bytes = 300352;
  r.footprint.ratio_vs_16bit = 2.5;
  LayerReport l;
  l.name = "model.layers.0.mlp.up_proj";
  l.klass = "Linear4bit";
  l.shape = {128, 64};
  l.has_error = true;
  l.snr_db = INFINITY;
  r.layers.push_back(l);
  nlohmann::json j = r.to_json();
  EXPECT_EQ(j.at("checks").size(), 2u);
  EXPECT_EQ(j.at("checks")[1].at("name"), "layer_types");
  EXPECT_TRUE(j.at("checks")[1].at("passed").get<bool>());
  EXPECT_EQ(j.at("footprint").at("footprint_bytes"), 300352);
  EXPECT_TRUE(j.at("layers")[0].at("snr_db").is_null());
  EXPECT_TRUE(j.at("passed").get<bool>());
  EXPECT_NE(r.to_table().find("all checks passed"), std::string::npos);

  r.checks.push_back({"generation", false, "output \"x\" is not among the 1 expected outputs"});
  EXPECT_FALSE(r.passed());
  ASSERT_NE(r.check("generation"), nullptr);
  EXPECT_FALSE(r.check("generation")->passed);
  EXPECT_EQ(r.check("logits"), nullptr);
  EXPECT_FALSE(r.to_json().at("passed").get<bool>());
  EXPECT_NE(r.to_table().find("FAIL  generation"), std::string::npos);
}
