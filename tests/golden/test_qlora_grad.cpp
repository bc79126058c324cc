// The model-level LoRA backward on every fixture architecture (Llama, Qwen2: qkv bias + tied
// head, GPT-2: learned positions + Conv1D + plain GELU MLP, Phi-3: fused qkv and gate_up,
// GPT-NeoX: parallel residual + partial rotary, Bloom: alibi + LayerNorm + embedding norm, OPT:
// ReLU + shifted positions; and random Qwen-3 / Gemma-2 checkpoints made here), fp32 and NF4: the training
// pass's loss equals the inference forward's, the adapters' gradients equal central finite differences of
// that loss, and gradient checkpointing gives the same gradients bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
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
  // selective recomputation (f32 on the CPU: the kept values are the forward's own), alone and
  // with the first layer recomputed whole
  a.recompute_granularity = "selective";
  for (const int64_t full_layers : {0, 1}) {
    a.recompute_num_layers = full_layers;
    LoraTrainer ts(p, a, 1);
    EXPECT_EQ(ts.gradients(b), grads)
        << "selective recomputation (" << full_layers << " layers whole) changes the gradients";
  }
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
        const float o = *v;
        // Central differences at a small step first (OPT's ReLU kinks inside +-h bias larger
        // steps); when a kink or the f32 loss's rounding spoils that one, at a larger and a smaller
        // step. A wrong gradient agrees with none of them.
        std::string tried;
        bool agrees = false;
        for (const float h : {5e-4f, 2e-3f, 1.25e-4f}) {
          *v = o + h;
          const double lp = tr.evaluate({b});
          *v = o - h;
          const double lm = tr.evaluate({b});
          *v = o;
          const double fd = (lp - lm) / (double(o + h) - double(o - h));
          tried += " h=" + std::to_string(h) + ": " + std::to_string(fd);
          if (std::abs(gv[i] - fd) <= 0.03 * gmax + 1e-3) {
            agrees = true;
            break;
          }
        }
        EXPECT_TRUE(agrees) << name << (which ? " dB[" : " dA[") << i << "] = " << gv[i]
                            << ", finite differences" << tried;
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
  EXPECT_EQ(n, int(test::fixture_models().size()));
}

TEST(QLoRAGrad, LlamaNf4) {
  check_arch(test::fixtures_root() / "models" / "llama", true);
}

// LoRA dropout: the masks are drawn again identically when a layer is recomputed (gradient
// checkpointing), and they do change the gradients (the training pass applies them).
TEST(QLoRAGrad, DropoutMasksReproducibleUnderCheckpointing) {
  const fs::path dir = test::fixtures_root() / "models" / "llama";
  LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.lora_dropout = 0.25;
  cfg.target_modules_str = "all-linear";
  cfg.init_lora_weights = "false";
  PeftModel p = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(dir / "fp32"), cfg, 5);
  std::mt19937_64 rng(3);
  const TrainBatch b = make_batch(p.model().config().vocab_size, rng);
  TrainingArguments a;
  LoraTrainer plain(p, a, 1);
  const auto g = plain.gradients(b);
  a.gradient_checkpointing = true;
  LoraTrainer ck(p, a, 1);
  EXPECT_EQ(ck.gradients(b), g);
  a.recompute_granularity = "selective";
  LoraTrainer sel(p, a, 1);
  EXPECT_EQ(sel.gradients(b), g);
  // the same adapter without dropout gives other gradients
  test::TempDir t;
  p.save_pretrained(t.path());
  LoraConfig c0 = LoraConfig::load(t.path());
  c0.lora_dropout = 0.0;
  c0.save(t.path());
  PeftModel q = PeftModel::from_pretrained(AutoModelForCausalLM::from_pretrained(dir / "fp32"), t.path());
  LoraTrainer nodrop(q, TrainingArguments{}, 1);
  EXPECT_NE(nodrop.gradients(b), g);
}

// The recomputation options are checked when the trainer is made: one clear error naming the field.
TEST(QLoRAGrad, RecomputeOptionsValidated) {
  LoraConfig cfg;
  cfg.target_modules_str = "all-linear";
  PeftModel p = PeftModel::get_peft_model(
      AutoModelForCausalLM::from_pretrained(test::fixtures_root() / "models" / "llama" / "fp32"), cfg, 5);
  TrainingArguments a;
  a.gradient_checkpointing = true;
  a.recompute_granularity = "partial";
  EXPECT_THROW(
      {
        try {
          LoraTrainer t(p, a, 1);
        } catch (const ConfigError& e) {
          EXPECT_NE(std::string(e.what()).find("recompute_granularity"), std::string::npos) << e.what();
          throw;
        }
      },
      ConfigError);
  a.recompute_granularity = "selective";
  a.recompute_num_layers = -1;
  EXPECT_THROW(LoraTrainer(p, a, 1), ConfigError);
  a.recompute_num_layers = 1;
  a.gradient_checkpointing = false;  // the recomputation options without checkpointing
  EXPECT_THROW(LoraTrainer(p, a, 1), ConfigError);
  a.gradient_checkpointing = true;
  a.recompute_granularity = "full";  // whole layers are what full recomputes anyway
  EXPECT_THROW(LoraTrainer(p, a, 1), ConfigError);
  a.recompute_granularity = "selective";
  EXPECT_NO_THROW(LoraTrainer(p, a, 1));
}

// Gradient accumulation as transformers >= 4.46: the micro-batches' losses are summed over the
// step's targets, so two micro-batches make the same step as one batch holding both.
TEST(QLoRAGrad, AccumulationEqualsOneBigBatch) {
  const fs::path dir = test::fixtures_root() / "models" / "llama";
  std::mt19937_64 rng(11);
  const TrainBatch b = make_batch(512, rng);  // sequences of 9 and 6 tokens: unequal targets
  TrainBatch b0{{b.input_ids[0]}, {b.labels[0]}}, b1{{b.input_ids[1]}, {b.labels[1]}};
  TrainingArguments a;
  a.learning_rate = 1e-2;
  a.adam_epsilon = 1.0;  // update ~ lr * g: compares the gradients (not AdamW's g / |g|)
  std::vector<LoraAdapter> out;
  std::vector<double> losses;
  for (int acc = 0; acc < 2; ++acc) {
    PeftModel p =
        PeftModel::from_pretrained(AutoModelForCausalLM::from_pretrained(dir / "nf4_dq"), dir / "lora_init");
    LoraTrainer tr(p, a, 1);
    const StepLog s = acc ? tr.train_step({b0, b1}) : tr.train_step({b});
    losses.push_back(s.loss);
    EXPECT_EQ(s.n_targets, 8 + 5 - 1);  // one label is -100
    out.push_back(p.adapter());
  }
  EXPECT_NEAR(losses[0], losses[1], 1e-6 * losses[0]);
  for (const auto& [name, pair] : out[0].modules) {
    const LoraPair& o = out[1].modules.at(name);
    for (auto [x, y] : {std::pair{&pair.A, &o.A}, std::pair{&pair.B, &o.B}})
      for (int64_t i = 0; i < x->numel(); ++i)
        ASSERT_NEAR(x->data<float>()[i], y->data<float>()[i], 1e-8) << name;
  }
}

namespace {

// A random Llama-like checkpoint of a family with no fixture folder: Qwen-3 (per-head q/k
// RMSNorm, untied head) or Gemma-2 (sandwich norms with the unit offset, scaled embeddings,
// attention and final soft-capping, a sliding-window layer, tanh GELU, tied head). Written to
// dir/fp32 as save_pretrained would.
void write_synthetic(const fs::path& dir, bool gemma) {
  const int64_t C = 32, F = 64, V = 96, Hq = 4, Hkv = 2, D = 8;
  std::mt19937_64 rng(gemma ? 21 : 22);
  std::map<std::string, Tensor> sd;
  auto w = [&](const std::string& n, Shape s, float scale, float shift = 0.0f) {
    Tensor t = test::random_normal(s, DType::F32, rng, scale);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] += shift;
    sd[n] = t;
  };
  const float norm_shift = gemma ? 0.0f : 1.0f;  // Gemma applies (1 + w)
  w("model.embed_tokens.weight", {V, C}, gemma ? 0.2f : 1.0f);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w(p + "input_layernorm.weight", {C}, 0.2f, norm_shift);
    w(p + "post_attention_layernorm.weight", {C}, 0.2f, norm_shift);
    w(p + "self_attn.q_proj.weight", {Hq * D, C}, 0.4f);
    w(p + "self_attn.k_proj.weight", {Hkv * D, C}, 0.4f);
    w(p + "self_attn.v_proj.weight", {Hkv * D, C}, 0.4f);
    w(p + "self_attn.o_proj.weight", {C, Hq * D}, 0.3f);
    w(p + "mlp.gate_proj.weight", {F, C}, 0.3f);
    w(p + "mlp.up_proj.weight", {F, C}, 0.3f);
    w(p + "mlp.down_proj.weight", {C, F}, 0.2f);
    if (gemma) {
      w(p + "pre_feedforward_layernorm.weight", {C}, 0.2f);
      w(p + "post_feedforward_layernorm.weight", {C}, 0.2f);
    } else {
      w(p + "self_attn.q_norm.weight", {D}, 0.2f, 1.0f);
      w(p + "self_attn.k_norm.weight", {D}, 0.2f, 1.0f);
    }
  }
  w("model.norm.weight", {C}, 0.2f, norm_shift);
  if (!gemma) w("lm_head.weight", {V, C}, 0.3f);
  nlohmann::json cfg = {{"architectures", {gemma ? "Gemma2ForCausalLM" : "Qwen3ForCausalLM"}},
                        {"model_type", gemma ? "gemma2" : "qwen3"},
                        {"hidden_size", C},
                        {"intermediate_size", F},
                        {"num_hidden_layers", 2},
                        {"num_attention_heads", Hq},
                        {"num_key_value_heads", Hkv},
                        {"head_dim", D},
                        {"vocab_size", V},
                        {"max_position_embeddings", 64},
                        {"rms_norm_eps", 1e-6},
                        {"rope_theta", 10000.0},
                        {"tie_word_embeddings", gemma}};
  if (gemma) {
    cfg["hidden_activation"] = "gelu_pytorch_tanh";
    cfg["query_pre_attn_scalar"] = D;
    cfg["sliding_window"] = 4;
    cfg["attn_logit_softcapping"] = 1.5;
    cfg["final_logit_softcapping"] = 3.0;
  } else {
    cfg["hidden_act"] = "silu";
  }
  fs::create_directories(dir / "fp32");
  save_safetensors(dir / "fp32" / "model.safetensors", sd);
  std::ofstream(dir / "fp32" / "config.json") << cfg.dump(2);
}

}  // namespace

// The ops no fixture model has (q/k norms, sandwich norms, soft-capping, a sliding window) at
// model level: same checks as the fixture architectures.
TEST(QLoRAGrad, SyntheticQwen3AndGemma2) {
  for (bool gemma : {false, true}) {
    test::TempDir t;
    write_synthetic(t.path(), gemma);
    check_arch(t.path(), false);
  }
}
