// The whole forward pass on the GPU: every fixture model loaded with device_map "cuda" (fp32,
// quantized while loading on the GPU, and the folders bitsandbytes saved) against
// transformers' logits and greedy tokens with the CPU path's tolerances; decode_batch on the
// GPU equals sequences alone (its argmax form too); save_pretrained from a GPU model writes the CPU
// path's bytes.
// Skips without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

#include "model_check.h"
#include "models/causal_lm_impl.h"
#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "ops/nn_ops.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

TEST(ModelCuda, FixtureLogitsAndGreedy) {
  SKIP_WITHOUT_CUDA();
  int checked = 0;
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    for (const char* variant : {"fp32", "nf4_dq", "fp4", "int8"}) {
      if (!fs::exists(dir / variant / "config.json")) continue;
      for (bool saved : {false, true}) {
        if (saved && std::string(variant) == "fp32") continue;
        SCOPED_TRACE(dir.filename().string() + "/" + variant +
                     (saved ? " (saved)" : " (quantized on the GPU)"));
        LoadOptions o;
        o.device_map = "cuda";
        if (!saved && std::string(variant) != "fp32")
          o.quantization_config = BitsAndBytesConfig::from_config_json(dir / variant / "config.json");
        CausalLM model = AutoModelForCausalLM::from_pretrained(dir / (saved ? variant : "fp32"), o);
        ASSERT_TRUE(model.device().is_cuda());
        test::check_model(dir, variant, model, std::string(variant) != "int8");
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 7 * 7);
}

// Decode steps replayed as CUDA graphs (device positions, capacity-sized attention splits) give
// the logits of the plain path: 3 sequences at their own positions, 8 greedy steps, every fixture
// model as saved in fp32 and in nf4_dq.
TEST(ModelCuda, GraphDecodeEqualsPlainPath) {
  SKIP_WITHOUT_CUDA();
  int models = 0;
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    for (const char* variant : {"fp32", "nf4_dq"}) {
      if (!fs::exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant);
      LoadOptions lo;
      lo.device_map = "cuda";
      CausalLM gpu = AutoModelForCausalLM::from_pretrained(dir / variant, lo);
      const CausalLM::Impl& m = gpu.impl();
      Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");
      std::vector<std::unique_ptr<KVCache>> a, b;
      std::vector<KVCache*> ca, cb;
      std::vector<int64_t> next;
      for (int64_t len : {3, 1, 6}) {
        a.push_back(gpu.new_cache(40));
        b.push_back(gpu.new_cache(40));
        ca.push_back(a.back().get());
        cb.push_back(b.back().get());
        gpu.forward_last(test::row(ids, 0, len), ca.back());
        gpu.forward_last(test::row(ids, 0, len), cb.back());
        next.push_back(len + 1);
      }
      const uint64_t before = m.graph_launches();
      for (int step = 0; step < 8; ++step) {
        Tensor g = gpu.decode_batch(next, ca);  // [3, V]
        std::vector<std::vector<int64_t>> batch;
        for (int64_t t : next) batch.push_back({t});
        Tensor p = m.forward_batch(batch, cb, false).to(Device::cpu());  // the plain path
        const int64_t V = g.size(1);
        for (int64_t i = 0; i < 3; ++i) {
          double d = 0, s = 0;
          int64_t best = 0;
          for (int64_t j = 0; j < V; ++j) {
            const double pv = p.data<float>()[i * V + j];
            d = std::max(d, std::fabs(pv - g.data<float>()[i * V + j]));
            s = std::max(s, std::fabs(pv));
            if (g.data<float>()[i * V + j] > g.data<float>()[i * V + best]) best = j;
          }
          EXPECT_LE(d, 1e-5 * s) << "step " << step << " sequence " << i;
          next[size_t(i)] = best;
        }
      }
      EXPECT_GE(m.graph_launches() - before, 6u) << "the steps after the second should replay a graph";
      ++models;
    }
  }
  EXPECT_GE(models, 7);
}

// The blocks of the forward pass, one at a time, on the GPU against the CPU for every fixture
// model in fp32 (2 sequences of 5 and 3 tokens): the first block whose output differs names the
// culprit when the whole-model check above fails.
TEST(ModelCuda, BlocksMatchCpuOneByOne) {
  SKIP_WITHOUT_CUDA();
  int models = 0;
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    if (!fs::exists(dir / "fp32" / "config.json")) continue;
    SCOPED_TRACE(dir.filename().string());
    LoadOptions lo;
    lo.device_map = "cuda";
    CausalLM gpu = AutoModelForCausalLM::from_pretrained(dir / "fp32", lo);
    CausalLM cpu = AutoModelForCausalLM::from_pretrained(dir / "fp32");
    const CausalLM::Impl &G = gpu.impl(), &C = cpu.impl();
    Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");
    const std::vector<std::vector<int64_t>> batch = {test::row(ids, 0, 5), test::row(ids, 0, 3)};
    auto g0 = G.make_cache(16), g1 = G.make_cache(16), c0 = C.make_cache(16), c1 = C.make_cache(16);
    KVCache* gc[] = {g0.get(), g1.get()};
    KVCache* cc[] = {c0.get(), c1.get()};
    Step gs = G.plan(batch, gc), cs = C.plan(batch, cc);
    auto rel = [](const Tensor& a_dev, const Tensor& b) {
      Tensor a = a_dev.to(Device::cpu()).contiguous(), bc = b.contiguous();
      double d = 0, s = 0;
      for (int64_t i = 0; i < a.numel(); ++i) {
        d = std::max(d, std::fabs(double(a.data<float>()[i]) - bc.data<float>()[i]));
        s = std::max(s, std::fabs(double(bc.data<float>()[i])));
      }
      return s > 0 ? d / s : d;
    };
    Tensor hg = G.embed_block(gs), hc = C.embed_block(cs);
    EXPECT_LE(rel(hg, hc), 1e-5) << "embed_block";
    for (size_t li = 0; li < C.layers.size(); ++li) {
      Tensor pg, pc;  // each layer's residual added here, so every layer's output is compared
      G.decoder_layer(gs, li, hg, pg);
      C.decoder_layer(cs, li, hc, pc);
      ASSERT_EQ(pg.defined(), pc.defined());
      if (pg.defined()) ops::add_(*gs.ctx, hg, pg), ops::add_(*cs.ctx, hc, pc);
      EXPECT_LE(rel(hg, hc), 1e-5) << "decoder_layer " << li;
    }
    {  // the head's pieces: the weight bytes on the device, then the final norm, then the linear
      Tensor wg = G.lm_head.lin.weight().to(Device::cpu()).contiguous(),
             wc = C.lm_head.lin.weight().contiguous();
      EXPECT_EQ(wg.shape(), wc.shape());
      EXPECT_EQ(0, std::memcmp(wg.data_ptr(), wc.data_ptr(), std::min(wg.nbytes(), wc.nbytes())))
          << "lm_head weight";
      const int64_t R = hc.size(0), Cw = hc.size(1);
      Tensor xg = Tensor::empty({R, Cw}, DType::F32, G.device), xc = Tensor::empty({R, Cw}, DType::F32);
      G.norm_into(G.final_norm, hg, xg, gs);
      C.norm_into(C.final_norm, hc, xc, cs);
      EXPECT_LE(rel(xg, xc), 1e-5) << "final norm";
      Tensor lg = G.lm_head.lin.forward(xg), lc = C.lm_head.lin.forward(xc);
      EXPECT_LE(rel(lg, lc), 1e-5) << "lm_head linear";
      Tensor lx = G.lm_head.lin.forward(xc.to(G.device));
      EXPECT_LE(rel(lx, lc), 1e-5) << "lm_head linear on the CPU's input";
    }
    EXPECT_LE(rel(G.head_block(gs, hg, false), C.head_block(cs, hc, false)), 1e-5) << "head_block";
    ++models;
  }
  EXPECT_GE(models, 7);
}

TEST(ModelCuda, DecodeBatchEqualsAloneAndSaveMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const auto dirs = test::fixture_model_dirs("reference.safetensors");
  ASSERT_FALSE(dirs.empty());
  for (const auto& dir : dirs) {
    if (!fs::exists(dir / "nf4_dq" / "config.json")) continue;
    SCOPED_TRACE(dir.filename().string());
    BitsAndBytesConfig qc = BitsAndBytesConfig::from_config_json(dir / "nf4_dq" / "config.json");
    CausalLM gpu = AutoModelForCausalLM::from_pretrained(dir / "fp32",
                                                         {.quantization_config = qc, .device_map = "cuda"});
    CausalLM cpu = AutoModelForCausalLM::from_pretrained(dir / "fp32", {.quantization_config = qc});
    Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");
    std::vector<std::unique_ptr<KVCache>> a, b, g;  // g: the argmax forms, found on the device
    std::vector<int64_t> next;
    for (int64_t len : {2, 5, 8}) {
      a.push_back(gpu.new_cache(32));
      b.push_back(gpu.new_cache(32));
      g.push_back(gpu.new_cache(32));
      Tensor la = gpu.forward_last(test::row(ids, 0, len), a.back().get());
      gpu.forward_last(test::row(ids, 0, len), b.back().get());
      EXPECT_EQ(gpu.forward_last_argmax(test::row(ids, 0, len), g.back().get()),
                std::max_element(la.data<float>(), la.data<float>() + la.size(1)) - la.data<float>());
      next.push_back(len);
    }
    std::vector<KVCache*> caches, gcaches;
    for (auto& c : a) caches.push_back(c.get());
    for (auto& c : g) gcaches.push_back(c.get());
    Tensor all = gpu.decode_batch(next, caches);
    const std::vector<int64_t> best = gpu.decode_batch_argmax(next, gcaches);
    const int64_t V = all.size(1);
    for (size_t i = 0; i < next.size(); ++i) {
      const float* row = all.data<float>() + int64_t(i) * V;
      EXPECT_EQ(best[i], std::max_element(row, row + V) - row) << "sequence " << i;
      Tensor one = gpu.forward_last({next[i]}, b[i].get());
      double d = 0, s = 0;
      for (int64_t j = 0; j < V; ++j) {
        d = std::max(d, std::fabs(double(one.data<float>()[j]) - all.data<float>()[int64_t(i) * V + j]));
        s = std::max(s, std::fabs(double(one.data<float>()[j])));
      }
      EXPECT_LE(d, 1e-5 * s) << "sequence " << i;
    }
    test::TempDir tg, tc;
    gpu.save_pretrained(tg.path());
    cpu.save_pretrained(tc.path());
    EXPECT_EQ(test::read_file(tg / "model.safetensors"), test::read_file(tc / "model.safetensors"));
    return;  // one model is enough here; the fixture loop above covers the rest
  }
}

// A thread that ran the model on the GPU (as a server's scheduler thread does: prefill, batched
// decode steps through the graph path, its own context and workspace) ends, and the model goes
// on: the same logits from this thread, and the buffers made on the ended thread's stream are
// used and freed afterwards (freeing them once crashed: its stream was destroyed at thread exit).
TEST(ModelCuda, ModelOutlivesTheThreadThatRanIt) {
  SKIP_WITHOUT_CUDA();
  const auto dirs = test::fixture_model_dirs("reference.safetensors");
  ASSERT_FALSE(dirs.empty());
  const fs::path dir = dirs.front();
  LoadOptions lo;
  lo.device_map = "cuda";
  auto gpu = std::make_unique<CausalLM>(AutoModelForCausalLM::from_pretrained(dir / "nf4_dq", lo));
  Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");
  const auto run = [&] {
    std::vector<std::unique_ptr<KVCache>> caches;
    std::vector<KVCache*> cs;
    std::vector<int64_t> next;
    for (int64_t len : {2, 4}) {
      caches.push_back(gpu->new_cache(32));
      cs.push_back(caches.back().get());
      gpu->forward_last(test::row(ids, 0, len), cs.back());
      next.push_back(len + 1);
    }
    Tensor last;
    for (int step = 0; step < 4; ++step) last = gpu->decode_batch(next, cs).to(Device::cpu());
    return last;
  };
  Tensor on_thread;
  std::thread t([&] { on_thread = run(); });
  t.join();
  const Tensor here = run();
  ASSERT_EQ(here.shape(), on_thread.shape());
  EXPECT_EQ(std::memcmp(here.data_ptr(), on_thread.data_ptr(), here.nbytes()), 0);
  gpu.reset();  // frees what the ended thread allocated
  Tensor after = Tensor::zeros({4}, DType::F32, Device::cuda(0)).to(Device::cpu());
  EXPECT_EQ(after.data<float>()[0], 0.0f);
}
