// Every model under $NIBBLE_FIXTURES/models/: logits and greedy tokens of nibble's CPU forward
// pass against transformers' (reference.safetensors), for fp32, for the fp32 weights quantized
// while loading (nf4 + double quant, fp4, int8, with the configs transformers used), and for
// the folders transformers + bitsandbytes saved. Tolerance: max |diff| / max |logit|. The two
// reference sequences run as one batch (forward_batch), as transformers ran them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "nibble/bnb_config.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

using test::row;

double tolerance(const std::string& variant) {
  if (variant == "fp32") return 1e-4;
  // LLM.int8 casts activations to fp16: an fp32 value on an fp16 rounding tie goes either way
  // on a last-bit difference from the GPU's fp32 (mistral: one element of layer 1's o_proj
  // input, 5e-3 in the logits of one token).
  if (variant == "int8") return 2e-2;
  return 1e-3;
}


void check_model(const fs::path& dir, const std::string& variant, const CausalLM& model, bool check_greedy) {
  SafetensorsFile ref = SafetensorsFile::open(dir / "reference.safetensors");
  Tensor ids = ref.get("input_ids");  // [B, T]
  Tensor want = ref.get(variant + ".logits");
  const int64_t B = ids.size(0), T = ids.size(1), V = want.size(2);
  // One batch, as transformers ran input_ids [B, T]: LLM.int8 chooses its outlier columns over
  // all B * T rows, so one sequence at a time can give other int8 logits (an outlier column of
  // one sequence changes the other's quantization).
  std::vector<std::vector<int64_t>> batch;
  for (int64_t b = 0; b < B; ++b) batch.push_back(row(ids, b, T));
  Tensor logits = model.forward_batch(batch);
  ASSERT_EQ(logits.shape(), (Shape{B, T, V}));
  double max_ref = 0, max_diff = 0;
  for (int64_t i = 0; i < B * T * V; ++i) {
    double w = want.data<float>()[i];
    max_ref = std::max(max_ref, std::fabs(w));
    max_diff = std::max(max_diff, std::fabs(w - double(logits.data<float>()[i])));
  }
  double rel = max_diff / max_ref;
  EXPECT_LE(rel, tolerance(variant)) << "max diff " << max_diff << " of max |logit| " << max_ref;
  std::printf("[ logits ] %-10s %-7s max|diff|/max|logit| = %.3e\n", dir.filename().string().c_str(), variant.c_str(), rel);
  Tensor greedy = ref.get(variant + ".greedy");  // [1, 8 + 16]
  std::vector<int64_t> prompt = row(ids, 0, 8);
  std::vector<int64_t> got = model.generate_greedy(prompt, greedy.size(1) - 8);
  std::vector<int64_t> expect = row(greedy, 0, greedy.size(1));
  if (check_greedy) {
    EXPECT_EQ(got, expect);
  } else if (got != expect) {
    std::cout << "[ info ] " << dir.filename().string() << "/" << variant << ": greedy tokens differ from transformers' (reported, not required)\n";
  }
}

}  // namespace

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
      if (!fs::exists(dir / variant / "config.json")) continue;
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
      if (!fs::exists(dir / variant / "config.json")) continue;
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
        max_diff = std::max(max_diff, std::fabs(double(all.data<float>()[b * T * V + i]) - one.data<float>()[i]));
      EXPECT_LE(max_diff, 1e-5) << "sequence " << b;
    }
    batch[1].pop_back();
    EXPECT_THROW(model.forward_batch(batch), ShapeError);
  }
}
