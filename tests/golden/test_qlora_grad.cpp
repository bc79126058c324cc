// The model-level LoRA backward on every fixture architecture (Llama, Qwen2: qkv bias + tied
// head, GPT-2: learned positions + Conv1D + plain GELU MLP, Phi-3: fused qkv and gate_up,
// GPT-NeoX: parallel residual + partial rotary, Bloom: alibi + LayerNorm + embedding norm, OPT:
// ReLU + shifted positions), fp32 and NF4: the training pass's loss equals the inference
// forward's, the adapters' gradients equal central finite differences of that loss, and
// gradient checkpointing gives the same gradients bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/train.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

// Two sequences of different lengths (the packed-rows path), one label ignored.
TrainBatch make_batch(int64_t V, std::mt19937_64& rng) {
  TrainBatch b;
  for (int64_t T : {9, 6}) {
    std::vector<int64_t> ids;
    for (int64_t t = 0; t < T; ++t) ids.push_back(int64_t(rng() % uint64_t(V)));
    b.input_ids.push_back(ids);
  }
  b.labels = b.input_ids;
  b.labels[0][4] = -100;
  return b;
}

double mean_nll_ref(const CausalLM& m, const TrainBatch& b) {
  double sum = 0;
  int64_t n = 0;
  for (size_t s = 0; s < b.input_ids.size(); ++s) {
    Tensor logits = m.forward(b.input_ids[s]);  // [T, V]
    const int64_t V = logits.size(1);
    for (size_t t = 0; t + 1 < b.input_ids[s].size(); ++t) {
      const int64_t y = b.labels[s][t + 1];
      if (y == -100) continue;
      const float* row = logits.data<float>() + int64_t(t) * V;
      double mx = row[0], z = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(row[v]));
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - mx);
      sum += mx + std::log(z) - row[y];
      ++n;
    }
  }
  return sum / double(n);
}

void check_arch(const fs::path& dir, bool nf4) {
  SCOPED_TRACE(dir.filename().string() + (nf4 ? " nf4" : " fp32"));
  LoadOptions lo;
  if (nf4) lo.quantization_config = BitsAndBytesConfig{.load_in_4bit = true, .bnb_4bit_quant_type = "nf4"};
  LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.target_modules_str = "all-linear";
  cfg.init_lora_weights = "false";  // B random too, so every gradient is non-zero
  PeftModel p = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(dir / "fp32", lo), cfg, 5);
  std::mt19937_64 rng(test::fresh_seed());
  const TrainBatch b = make_batch(p.model().config().vocab_size, rng);
  TrainingArguments a;
  LoraTrainer tr(p, a, 1);
  const double loss = tr.evaluate({b});
  EXPECT_NEAR(loss, mean_nll_ref(p.model(), b), 1e-5 * loss);
  const auto grads = tr.gradients(b);
  ASSERT_FALSE(grads.empty());
  a.gradient_checkpointing = true;
  LoraTrainer tc(p, a, 1);
  EXPECT_EQ(tc.gradients(b), grads) << "gradient checkpointing changes the gradients";
  // finite differences on each module's largest |dA| and |dB| entries and one other entry
  int checked = 0;
  for (auto& [name, pair] : p.adapter().modules) {
    const auto& g = grads.at(name);
    for (int which = 0; which < 2; ++which) {
      Tensor& t = which ? pair.B : pair.A;
      const std::vector<float>& gv = which ? g.second : g.first;
      size_t best = 0;
      for (size_t i = 0; i < gv.size(); ++i)
        if (std::abs(gv[i]) > std::abs(gv[best])) best = i;
      const double gmax = std::abs(gv[best]);
      ASSERT_GT(gmax, 0.0) << name;
      for (size_t i : {best, size_t(rng() % gv.size())}) {
        float* v = t.data<float>() + i;
        const float o = *v, h = 5e-4f;  // small: OPT's ReLU kinks inside +-h bias larger steps
        *v = o + h;
        const double lp = tr.evaluate({b});
        *v = o - h;
        const double lm = tr.evaluate({b});
        *v = o;
        const double fd = (lp - lm) / (double(o + h) - double(o - h));
        EXPECT_NEAR(gv[i], fd, 0.03 * gmax + 1e-3) << name << (which ? " dB[" : " dA[") << i << "]";
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 4 * int(p.adapter().modules.size()));
}

}  // namespace

TEST(QLoRAGrad, EveryFixtureArchitectureFp32) {
  int n = 0;
  for (const auto& dir : test::fixture_model_dirs("fp32")) {
    check_arch(dir, false);
    ++n;
  }
  EXPECT_GE(n, 7);
}

TEST(QLoRAGrad, LlamaNf4) {
  check_arch(test::fixtures_root() / "models" / "llama", true);
}
