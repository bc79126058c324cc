// A model split over the GPU and the CPU by layer (an hf_device_map) runs as the same model on
// one device: every fixture model in fp32 and NF4 + double quant (compute float32, quantized
// while loading on the device each layer lands on), split as {embedding + first half of the
// layers: cuda:0, the rest + norm + head: cpu}, the reverse, and every layer alternating.
// Logits, greedy tokens, a batched decode at different positions, mean_nll and the
// save_pretrained bytes are compared against the model loaded on cuda:0 alone; the logits also
// against transformers' reference. Skips without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <set>

#include "model_check.h"
#include "models/arch.h"
#include "models/causal_lm_impl.h"
#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nibble/verify.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

// An explicit map over the model's modules, by role: the embedding stage, each layer, the tail.
struct Split {
  const char* name;
  std::function<std::string(int64_t layer, int64_t n_layers)> layer;
  const char* embed;  // the embedding stage (embeddings, positions, embedding norm)
  const char* tail;   // final norm + output head
};

const Split kSplits[] = {
    {"gpu-first-half", [](int64_t i, int64_t n) { return i < (n + 1) / 2 ? "cuda:0" : "cpu"; }, "cuda:0",
     "cpu"},
    {"cpu-first-half", [](int64_t i, int64_t n) { return i < (n + 1) / 2 ? "cpu" : "cuda:0"; }, "cpu",
     "cuda:0"},
    {"alternating", [](int64_t i, int64_t) { return i % 2 == 0 ? "cuda:0" : "cpu"; }, "cuda:0", "cpu"},
};

HfDeviceMap split_map(const ModelConfig& c, const Split& s) {
  const models::ArchSpec& spec = models::arch_spec(c.architecture);
  const std::string& P = spec.prefix;
  HfDeviceMap m;
  for (const std::string& child : spec.base_children) {
    if (child == spec.layers) {
      for (int64_t i = 0; i < c.num_hidden_layers; ++i)
        m.push_back({P + child + "." + std::to_string(i), s.layer(i, c.num_hidden_layers)});
    } else {
      m.push_back({P + child, child == spec.final_norm ? s.tail : s.embed});
    }
  }
  m.push_back({spec.lm_head, s.tail});
  return m;
}

double rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return INFINITY;
  double d = 0, s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    d = std::max(d, std::fabs(double(a.data<float>()[i]) - b.data<float>()[i]));
    s = std::max(s, std::fabs(double(b.data<float>()[i])));
  }
  return s > 0 ? d / s : d;
}

int64_t argmax_row(const Tensor& t, int64_t r) {
  const int64_t V = t.size(1);
  int64_t best = 0;
  for (int64_t j = 1; j < V; ++j)
    if (t.data<float>()[r * V + j] > t.data<float>()[r * V + best]) best = j;
  return best;
}

// The NF4 + double quant config of the fixtures (compute float32), with the CPU offload that
// transformers requires before it places part of a quantized model on the CPU.
BitsAndBytesConfig nf4_config(const fs::path& dir) {
  BitsAndBytesConfig qc = BitsAndBytesConfig::from_config_json(dir / "nf4_dq" / "config.json");
  qc.llm_int8_enable_fp32_cpu_offload = true;
  return qc;
}

// 3 sequences at their own positions, 4 decode steps on each model (the one-device model's
// greedy tokens fed to both, so a near tie cannot make them part): per-step logits within tol.
void check_decode_batch(const CausalLM& split, const CausalLM& one, const Tensor& ids, double tol) {
  std::vector<std::unique_ptr<KVCache>> a, b;
  std::vector<KVCache*> ca, cb;
  std::vector<int64_t> next;
  for (int64_t len : {3, 1, 6}) {
    a.push_back(split.new_cache(24));
    b.push_back(one.new_cache(24));
    ca.push_back(a.back().get());
    cb.push_back(b.back().get());
    split.forward_last(test::row(ids, 0, len), ca.back());
    one.forward_last(test::row(ids, 0, len), cb.back());
    next.push_back(len + 1);
  }
  for (int step = 0; step < 4; ++step) {
    Tensor s = split.decode_batch(next, ca), o = one.decode_batch(next, cb);  // [3, V]
    EXPECT_LE(rel_diff(s, o), tol) << "decode step " << step;
    for (int64_t i = 0; i < 3; ++i) next[size_t(i)] = argmax_row(o, i);
  }
}

}  // namespace

TEST(ModelSplitCuda, SplitEqualsOneDevice) {
  SKIP_WITHOUT_CUDA();
  int checked = 0;
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    const ModelConfig c = ModelConfig::from_file(dir / "fp32" / "config.json");
    const Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");  // [B, T]
    std::vector<std::vector<int64_t>> batch;
    for (int64_t b = 0; b < ids.size(0); ++b) batch.push_back(test::row(ids, b, ids.size(1)));
    for (const char* variant : {"fp32", "nf4_dq"}) {
      if (!fs::exists(dir / variant / "config.json")) continue;
      const bool q = std::string(variant) != "fp32";
      LoadOptions one_opts;
      one_opts.device_map = "cuda";
      if (q) one_opts.quantization_config = nf4_config(dir);
      const CausalLM one = AutoModelForCausalLM::from_pretrained(dir / "fp32", one_opts);
      const Tensor one_logits = one.forward_batch(batch);
      const std::vector<int64_t> prompt = test::row(ids, 0, 8);
      const std::vector<int64_t> one_greedy = one.generate_greedy(prompt, 12);
      test::TempDir one_saved;
      one.save_pretrained(one_saved.path());
      for (const Split& s : kSplits) {
        SCOPED_TRACE(dir.filename().string() + "/" + variant + " " + s.name);
        LoadOptions o = one_opts;
        o.device_map_modules = split_map(c, s);
        const CausalLM split = AutoModelForCausalLM::from_pretrained(dir / "fp32", o);
        const CausalLM::Impl& m = split.impl();
        // each module on its device: the plan, the weights, the hf_device_map
        ASSERT_TRUE(m.place.split());
        EXPECT_EQ(split.hf_device_map(), o.device_map_modules);
        EXPECT_EQ(split.device().str(), s.embed);
        EXPECT_EQ(m.embed.device().str(), s.embed);
        for (size_t i = 0; i < m.layers.size(); ++i) {
          const std::string want = s.layer(int64_t(i), int64_t(m.layers.size()));
          EXPECT_EQ(m.place.layers[i].str(), want) << "layer " << i;
          EXPECT_EQ(m.layers[i].o.lin.device().str(), want) << "layer " << i;
          EXPECT_EQ(m.layers[i].attn_norm.w.device().str(), want) << "layer " << i;
        }
        EXPECT_EQ(m.lm_head.lin.device().str(), s.tail);
        EXPECT_EQ(m.final_norm.w.device().str(), s.tail);
        // logits (one batch), against the one-device model and transformers' reference
        EXPECT_LE(rel_diff(split.forward_batch(batch), one_logits), 1e-5) << "forward_batch";
        test::check_model(dir, variant, split, true);
        // greedy generation, batched decode, perplexity
        EXPECT_EQ(split.generate_greedy(prompt, 12), one_greedy);
        check_decode_batch(split, one, ids, 1e-5);
        const double nll_s = split.mean_nll(batch[0]), nll_o = one.mean_nll(batch[0]);
        EXPECT_NEAR(nll_s, nll_o, 1e-5 * std::max(1.0, std::fabs(nll_o)));
        // save_pretrained: the one-device model's weight bytes
        test::TempDir saved;
        split.save_pretrained(saved.path());
        EXPECT_EQ(test::read_file(saved / "model.safetensors"),
                  test::read_file(one_saved / "model.safetensors"));
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 7 * 2 * 3);
}

// A split from accelerate's placement (sequential under a small cuda:0 budget) runs, and verify()
// passes its checks on a split NF4 model (the round trip reloads it split the same way).
TEST(ModelSplitCuda, PlacedByMaxMemoryAndVerified) {
  SKIP_WITHOUT_CUDA();
  const fs::path dir = test::fixtures_root() / "models" / "llama";
  if (!test::fixture_exists(dir / "fp32" / "config.json")) return;
  const Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");
  const std::vector<int64_t> seq = test::row(ids, 0, ids.size(1));
  LoadOptions on_gpu;
  on_gpu.device_map = "cuda";
  const CausalLM one = AutoModelForCausalLM::from_pretrained(dir / "fp32", on_gpu);
  LoadOptions o;
  o.device_map = "sequential";
  for (int64_t gpu_bytes = 100000; gpu_bytes < 1000000; gpu_bytes += 50000) {  // the first budget that splits
    o.max_memory = MaxMemory{{"cuda:0", gpu_bytes}, {"cpu", int64_t(1) << 30}};
    std::set<std::string> devices;
    for (const auto& [k, v] :
         infer_device_map(one.config(), {.device_map = "sequential", .max_memory = o.max_memory}))
      devices.insert(v);
    if (devices.size() > 1) break;
  }
  const CausalLM split = AutoModelForCausalLM::from_pretrained(dir / "fp32", o);
  ASSERT_TRUE(split.impl().place.split()) << "the budget should leave part of the model on the CPU";
  EXPECT_LE(rel_diff(split.forward(seq), one.forward(seq)), 1e-5);
  // a budget that cannot hold the model: the placement's error (what it needs, what was allowed)
  o.max_memory = MaxMemory{{"cuda:0", 1000}, {"cpu", 1000}};
  EXPECT_THROW(AutoModelForCausalLM::from_pretrained(dir / "fp32", o), ConfigError);

  LoadOptions q;
  q.quantization_config = nf4_config(dir);
  q.device_map_modules = split_map(split.config(), kSplits[0]);
  const CausalLM qsplit = AutoModelForCausalLM::from_pretrained(dir / "fp32", q);
  VerifyOptions vo;
  vo.prompt_ids = test::row(ids, 0, 8);
  const VerifyReport r = verify(qsplit, vo);
  for (const char* check : {"footprint", "layer_types", "weight_dtypes", "configuration", "round_trip",
                            "layer_error", "logits"}) {
    const VerifyCheck* ch = r.check(check);
    if (ch) {
      EXPECT_TRUE(ch->passed) << check << ": " << ch->detail;
    }
  }
  ASSERT_NE(r.check("round_trip"), nullptr);
}
