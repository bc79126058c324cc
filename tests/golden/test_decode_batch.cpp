// decode_batch: one decode step of several sequences, each at its own position in its own KV
// cache, run as one batch (continuous batching). Its logits must equal running each sequence
// alone, for fp32 and 4-bit fixture models, and its argmax form (decode_batch_argmax,
// forward_last_argmax) must give the first maximum of the same rows; a preallocated cache refuses
// to grow.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "models/causal_lm_impl.h"  // KVCache
#include "nibble/bnb_config.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

// The first maximum of row r of logits [R, V] (torch.argmax).
int64_t row_argmax(const Tensor& logits, int64_t r) {
  const int64_t V = logits.size(1);
  const float* p = logits.data<float>() + r * V;
  return std::max_element(p, p + V) - p;
}

double max_abs_diff(const Tensor& a, const float* b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; ++i) d = std::max(d, std::fabs(double(a.data<float>()[i]) - double(b[i])));
  return d;
}

void check_decode_batch(const CausalLM& model, const Tensor& ids) {
  const int64_t T = ids.size(1);
  // three sequences at different positions: prompts of 3, 5 and T ids
  std::vector<std::vector<int64_t>> prompts = {test::row(ids, 0, 3), test::row(ids, 1 % ids.size(0), 5),
                                               test::row(ids, 0, T)};
  std::vector<std::unique_ptr<KVCache>> batched, alone, greedy;  // greedy: the argmax forms
  std::vector<int64_t> next;
  for (const auto& p : prompts) {
    batched.push_back(model.new_cache(64));
    alone.push_back(model.new_cache(64));
    greedy.push_back(model.new_cache(64));
    Tensor a = model.forward_last(p, batched.back().get());
    EXPECT_EQ(model.forward_last_argmax(p, greedy.back().get()), row_argmax(a, 0));
    Tensor b = model.forward(p, alone.back().get());
    const int64_t V = a.size(1);
    ASSERT_EQ(a.shape(), (Shape{1, V}));
    // forward_last equals the last row of the full forward
    EXPECT_LE(max_abs_diff(a, b.data<float>() + (int64_t(p.size()) - 1) * V, V), 1e-6);
    next.push_back(int64_t(p.size()) % V);
  }
  int checked = 0;
  for (int step = 0; step < 4; ++step) {
    std::vector<KVCache*> caches, gcaches;
    for (auto& c : batched) caches.push_back(c.get());
    for (auto& c : greedy) gcaches.push_back(c.get());
    Tensor all = model.decode_batch(next, caches);  // [3, V]
    // the argmax form from the same state (the greedy caches hold what the batched ones hold)
    const std::vector<int64_t> best = model.decode_batch_argmax(next, gcaches);
    const int64_t V = all.size(1);
    ASSERT_EQ(all.shape(), (Shape{3, V}));
    ASSERT_EQ(best.size(), next.size());
    for (size_t b = 0; b < next.size(); ++b) {
      EXPECT_EQ(best[b], row_argmax(all, int64_t(b))) << "sequence " << b << " step " << step;
      EXPECT_EQ(greedy[b]->length(), batched[b]->length());
      Tensor one = model.forward({next[b]}, alone[b].get());  // [1, V]
      double scale = 0;
      for (int64_t i = 0; i < V; ++i) scale = std::max(scale, std::fabs(double(one.data<float>()[i])));
      EXPECT_LE(max_abs_diff(one, all.data<float>() + int64_t(b) * V, V), 1e-5 * scale)
          << "sequence " << b << " step " << step;
      EXPECT_EQ(batched[b]->length(), alone[b]->length());
      ++checked;
    }
    for (size_t b = 0; b < next.size(); ++b) next[b] = (next[b] * 7 + 3) % V;
  }
  EXPECT_EQ(checked, 12);
}

}  // namespace

TEST(DecodeBatch, EqualsSequencesAlone) {
  int models = 0;
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    Tensor ids = SafetensorsFile::open(dir / "reference.safetensors").get("input_ids");
    for (const char* variant : {"fp32", "nf4_dq"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant);
      CausalLM model = AutoModelForCausalLM::from_pretrained(dir / variant);
      check_decode_batch(model, ids);
      ++models;
    }
  }
  EXPECT_EQ(models, 2 * int(test::fixture_models().size()));  // fp32 and nf4_dq of each
}

TEST(DecodeBatch, PreallocatedCacheDoesNotGrow) {
  const auto dirs = test::fixture_model_dirs("reference.safetensors");
  ASSERT_FALSE(dirs.empty());
  CausalLM model = AutoModelForCausalLM::from_pretrained(dirs.front() / "fp32");
  auto cache = model.new_cache(4);
  EXPECT_EQ(cache->capacity(), 4);
  model.forward({1, 2, 3}, cache.get());
  model.forward({4}, cache.get());
  EXPECT_EQ(cache->length(), 4);
  EXPECT_THROW(model.forward({5}, cache.get()), ShapeError);
  EXPECT_THROW(model.decode_batch({1, 2}, {cache.get()}), ShapeError);
  EXPECT_THROW(model.decode_batch_argmax({1, 2}, {cache.get()}), ShapeError);
  EXPECT_THROW(model.decode_batch_argmax({}, {}), ShapeError);
}

TEST(DeviceMap, NamesAreResolvedOrRefused) {
  EXPECT_EQ(resolve_device_map("cpu"), Device::cpu());
  EXPECT_EQ(resolve_device_map("auto"), cuda_available() ? Device::cuda(0) : Device::cpu());
  EXPECT_THROW(resolve_device_map("tpu"), ConfigError);
  EXPECT_THROW(resolve_device_map("cuda:x"), ConfigError);
  if (!cuda_available()) {
    EXPECT_THROW(resolve_device_map("cuda"), UnsupportedError);
    EXPECT_THROW(resolve_device_map("cuda:0"), UnsupportedError);
  }
}
