// Quantizing the fixture models' fp32 weights reproduces the checkpoints that transformers +
// bitsandbytes saved (nf4_dq/, fp4/, int8/) byte for byte: packed weights, absmax, nested
// state, quant_state JSON, int8 CB and SCB. The default Linear predicate picks the same
// modules transformers converted (GPT-2's Conv1D weights, stored [in, out], are compared
// after the transpose transformers applies).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "nibble/bnb_config.h"
#include "nibble/quant.h"
#include "nibble/quantize.h"
#include "nibble/safetensors.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

bool same_bytes(const Tensor& a, const Tensor& b) {
  Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.nbytes() == y.nbytes() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

}  // namespace

TEST(CheckpointQuant, ReproducesBitsandbytesCheckpoints) {
  auto dirs = test::fixture_model_dirs("fp32/model.safetensors");
  ASSERT_EQ(dirs.size(), test::fixture_models().size());
  int compared = 0;
  for (const auto& dir : dirs) {
    Checkpoint fp32 = Checkpoint::open(dir / "fp32");
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant);
      BitsAndBytesConfig qc = BitsAndBytesConfig::from_config_json(dir / variant / "config.json");
      Checkpoint want = Checkpoint::open(dir / variant);
      // The weights bitsandbytes quantized: those with a quant_state blob (4-bit) or an SCB.
      std::set<std::string> quantized;
      for (const auto& k : want.names()) {
        auto p = k.find(".weight.quant_state.");
        if (p != std::string::npos) quantized.insert(k.substr(0, p + 7));
        if (k.ends_with(".SCB")) quantized.insert(k.substr(0, k.size() - 4) + ".weight");
      }
      ASSERT_FALSE(quantized.empty());
      bool conv1d = dir.filename() == "gpt2";
      QuantizeOptions opts;
      opts.measure_error = false;
      // Transformers' module choice, stated by the saved file; the default rule is checked below.
      opts.predicate = [&](const std::string& name, const Shape&) {
        return quantized.count(name) ? std::string() : std::string("kept");
      };
      // GPT-2 stores Conv1D weights [in, out]; transformers quantizes the transpose.
      CheckpointQuantization r;
      if (conv1d) {
        std::map<std::string, Tensor> t;
        for (const auto& n : fp32.names())
          t[n] = quantized.count(n) ? fp32.get(n).transpose(0, 1).contiguous() : fp32.get(n);
        test::TempDir tmp;
        save_safetensors(tmp / "model.safetensors", t);
        r = quantize_checkpoint(Checkpoint::open(tmp.path()), qc, opts);
      } else {
        r = quantize_checkpoint(fp32, qc, opts);
      }
      for (const auto& k : want.names()) {
        bool derived = false;
        for (const auto& q : quantized)
          if (k.starts_with(q) || k == q.substr(0, q.size() - 7) + ".SCB") derived = true;
        if (!derived) continue;
        SCOPED_TRACE(k);
        ASSERT_TRUE(r.state_dict.count(k)) << "missing";
        Tensor w = want.get(k);
        EXPECT_EQ(r.state_dict[k].shape(), w.shape());
        EXPECT_TRUE(same_bytes(r.state_dict[k], w));
        ++compared;
      }
      // our keys for the quantized modules are exactly the saved ones
      for (const auto& [k, v] : r.state_dict) {
        if (!fp32.contains(k)) {
          EXPECT_TRUE(want.contains(k)) << k;
        }
      }

      if (!conv1d) {  // the default predicate agrees with transformers' choice of modules
        auto pred = default_linear_predicate(fp32, qc);
        for (const auto& n : fp32.names()) {
          bool ours = pred(n, fp32.info(n).shape).empty();
          EXPECT_EQ(ours, quantized.count(n) > 0) << n;
        }
      }
    }
  }
  EXPECT_GT(compared, 100);
}

// The real model: TinyStories-656K (tied head stored as lm_head.weight with an alias) as
// transformers + bitsandbytes saved it in NF4 with double quantization.
TEST(CheckpointQuant, TinyStoriesNf4MatchesBitsandbytes) {
  fs::path want_dir = test::fixtures_root() / "tinystories" / "nf4_dq";
  Checkpoint want = Checkpoint::open(want_dir);
  BitsAndBytesConfig qc = BitsAndBytesConfig::from_config_json(want_dir / "config.json");
  Checkpoint fp32 = Checkpoint::open(test::shared_root() / "models" / "tinystories-656k");
  QuantizeOptions opts;
  opts.measure_error = false;
  CheckpointQuantization r = quantize_checkpoint(fp32, qc, opts);
  int quantized = 0;
  for (const auto& k : want.names()) {
    if (k.find(".weight.") == std::string::npos) continue;  // the quantization entries
    SCOPED_TRACE(k);
    ASSERT_TRUE(r.state_dict.count(k));
    EXPECT_TRUE(same_bytes(r.state_dict[k], want.get(k)));
    quantized += k.ends_with(".weight.quant_map");
  }
  EXPECT_EQ(quantized, 14);
  for (const auto& t : r.tensors)
    if (t.format != "kept") {
      EXPECT_TRUE(same_bytes(r.state_dict[t.name], want.get(t.name))) << t.name;
    }
}
