// Every model under $NIBBLE_FIXTURES/models/: logits and greedy tokens of nibble's CPU forward
// pass against transformers' (reference.safetensors), for fp32, for the fp32 weights quantized
// while loading (nf4 + double quant, fp4, int8, with the configs transformers used), and for
// the folders transformers + bitsandbytes saved. Tolerance: max |diff| / max |logit|. The two
// reference sequences run as one batch (forward_batch), as transformers ran them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "model_check.h"
#include "nibble/bnb_config.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

using test::check_model;
using test::row;

TEST(ModelLogits, Fp32) {
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    SCOPED_TRACE(dir.filename().string());
    CausalLM model = AutoModelForCausalLM::from_pretrained(dir / "fp32");
    check_model(dir, "fp32", model, true);
  }
}

TEST(ModelLogits, QuantizedWhileLoading) {
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant + " (quantized while loading)");
      LoadOptions opts;
      opts.quantization_config = BitsAndBytesConfig::from_config_json(dir / variant / "config.json");
      CausalLM model = AutoModelForCausalLM::from_pretrained(dir / "fp32", opts);
      check_model(dir, variant, model, std::string(variant) != "int8");
    }
  }
}

TEST(ModelLogits, SavedQuantizedFolders) {
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant + " (saved by bitsandbytes)");
      CausalLM model = AutoModelForCausalLM::from_pretrained(dir / variant);
      ASSERT_TRUE(model.is_quantized());
      check_model(dir, variant, model, std::string(variant) != "int8");
    }
  }
}

// A batch is per-row work plus per-sequence attention: without int8 weights each row of
// forward_batch equals forward on that sequence alone; sequences of unequal length are refused.
TEST(ModelLogits, BatchRowsMatchSingleSequences) {
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    SCOPED_TRACE(dir.filename().string());
    CausalLM model = AutoModelForCausalLM::from_pretrained(dir / "fp32");
    Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");
    const int64_t B = ids.size(0), T = ids.size(1);
    std::vector<std::vector<int64_t>> batch;
    for (int64_t b = 0; b < B; ++b) batch.push_back(row(ids, b, T));
    Tensor all = model.forward_batch(batch);
    const int64_t V = all.size(2);
    for (int64_t b = 0; b < B; ++b) {
      Tensor one = model.forward(batch[size_t(b)]);
      double max_diff = 0;
      for (int64_t i = 0; i < T * V; ++i)
        max_diff =
            std::max(max_diff, std::fabs(double(all.data<float>()[b * T * V + i]) - one.data<float>()[i]));
      EXPECT_LE(max_diff, 1e-5) << "sequence " << b;
    }
    batch[1].pop_back();
    EXPECT_THROW(model.forward_batch(batch), ShapeError);
  }
}
