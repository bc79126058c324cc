// `nibble inspect MODEL --device-map ... --max-memory ... --json`: the placement from the config
// alone (no GPU here), equal to transformers' for the same budgets; errors exit 2 with one line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "nibble/tensor.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;
using test::nibble_cli;
using test::q;

namespace {

std::string budgets_flag(const nlohmann::json& mm) {
  std::string s;
  for (auto it = mm.begin(); it != mm.end(); ++it)
    s += (s.empty() ? "" : ",") + it.key() + "=" +
         (it.value().is_string() ? it.value().get<std::string>() : it.value().dump());
  return s;
}

}  // namespace

TEST(DeviceMapCli, InspectPrintsTransformersMap) {
  std::ifstream f(fs::path(NIBBLE_SOURCE_DIR) / "tests/data/device_map/maps.json");
  const nlohmann::json refs = nlohmann::json::parse(f);
  // gpt2 in its config's float32, and the 7B Llama (float16 config) given --dtype bfloat16 and 4-bit.
  int run = 0;
  for (const auto& c : refs.at("cases")) {
    const bool gpt2 = c.at("model") == "gpt2" && c.at("dtype") == "float32";
    const bool llama = c.at("model") == "llama-2-7b" && c.at("quant") == "nf4_dq";
    if ((!gpt2 && !llama) || c.contains("error") || c.at("hf_device_map").size() < 2) continue;
    std::string args = "inspect " +
                       q(fs::path(NIBBLE_SOURCE_DIR) / c.at("config").get<std::string>()).substr(0) +
                       " --device-map " + c.at("device_map").get<std::string>() + " --max-memory " +
                       budgets_flag(c.at("max_memory")) + " --json";
    if (gpt2)
      args = "inspect " + q(fs::path(NIBBLE_SOURCE_DIR) / "../shared/fixtures/models/gpt2/fp32") +
             args.substr(args.find(" --device-map"));
    else
      args = "inspect --config-only" + args.substr(7) +
             " --dtype bfloat16 --load-in-4bit "
             "--bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant --bnb-4bit-compute-dtype bfloat16";
    SCOPED_TRACE(args);
    test::CliRun r = nibble_cli(args);
    ASSERT_EQ(r.rc, 0) << r.err;
    nlohmann::json out = nlohmann::json::parse(r.out);
    EXPECT_EQ(out.at("hf_device_map"), c.at("hf_device_map"));
    ++run;
  }
  EXPECT_GE(run, 10);
}

TEST(DeviceMapCli, ClearErrors) {
  const std::string model = q(test::fixtures_root() / "models/llama/fp32");
  test::CliRun r = nibble_cli("inspect " + model + " --device-map auto --max-memory cuda:0=20XB --json");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("memory size '20XB' is not valid"), std::string::npos) << r.err;
  r = nibble_cli("inspect " + model + " --device-map auto --max-memory cuda:0=1000,cpu=1000 --json");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("max_memory allows cuda:0 1000, cpu 1000"), std::string::npos) << r.err;
  r = nibble_cli("inspect " + model + " --device-map model.embed_tokens=cuda:0,model.layers=npu:1 --json");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("unknown device 'npu:1'"), std::string::npos) << r.err;
  if (!cuda_available()) {
    r = nibble_cli("inspect " + model + " --device-map balanced --json");
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("no CUDA device is visible"), std::string::npos) << r.err;
  }
  // An explicit map is printed as given (GPUs as integers).
  r = nibble_cli("inspect " + model + " --device-map model=cuda:1,lm_head=cpu --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).at("hf_device_map"),
            nlohmann::json::parse(R"({"model": 1, "lm_head": "cpu"})"));
}
