// QLoRA training with the model on the GPU: the fixture golden of tests/golden/test_qlora.cpp
// (8 AdamW steps from peft's initial adapter on the NF4 + double-quant llama, compute float32)
// with device_map "cuda". The forward, the backward and the loss run on the GPU; AdamW runs on
// the host copy of the adapter, which is copied to the device after each step. Tolerance: 1e-4
// relative per loss against peft's, as the CPU golden (the CPU run is within 5e-7 of peft's; the
// GPU sums in other orders, which moves a loss by ~1e-6 relative). The CPU run of the same steps
// is checked alongside, to the same tolerance. Skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nibble/train.h"
#include "model_check.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

#ifdef NIBBLE_WITH_CUDA
namespace {

fs::path llama() {
  return test::fixtures_root() / "models" / "llama";
}

std::vector<std::vector<int64_t>> batch() {
  Tensor ids = SafetensorsFile::open(llama() / "reference.safetensors").get("input_ids");
  return {test::row(ids, 0, ids.size(1)), test::row(ids, 1, ids.size(1))};
}

// The fixture's TrainingArguments with gradient checkpointing by selective recomputation (the
// first `full_layers` layers recomputed whole).
TrainingArguments selective(int64_t full_layers) {
  TrainingArguments a = test::qlora_fixture_args();
  a.gradient_checkpointing = true;
  a.recompute_granularity = "selective";
  a.recompute_num_layers = full_layers;
  return a;
}

std::vector<double> eight_losses(const std::string& device_map,
                                 const TrainingArguments& args = test::qlora_fixture_args()) {
  LoadOptions lo;
  lo.device_map = device_map;
  PeftModel p = PeftModel::from_pretrained(AutoModelForCausalLM::from_pretrained(llama() / "nf4_dq", lo),
                                           llama() / "lora_init");
  LoraTrainer tr(p, args, 8);
  std::vector<double> out;
  for (int i = 0; i < 8; ++i) out.push_back(tr.train_step({TrainBatch{batch(), {}}}).loss);
  return out;
}

TEST(QLoRACuda, EightAdamWStepsMatchPeftOnTheGpu) {
  SKIP_WITHOUT_CUDA();
  nlohmann::json ref = nlohmann::json::parse(std::ifstream(llama() / "reference.json"))["lora"];
  const auto want = ref["losses"].get<std::vector<double>>();
  ASSERT_EQ(want.size(), 8u);
  const std::vector<double> gpu = eight_losses("cuda"), cpu = eight_losses("cpu"),
                            sel = eight_losses("cuda", selective(0)),
                            sel1 = eight_losses("cuda", selective(1));
  for (size_t i = 0; i < want.size(); ++i) {
    std::printf("step %zu loss gpu %.9f cpu %.9f selective %.9f / %.9f peft %.9f rel %.2e\n", i + 1, gpu[i],
                cpu[i], sel[i], sel1[i], want[i], std::abs(gpu[i] - want[i]) / want[i]);
    EXPECT_NEAR(gpu[i], want[i], 1e-4 * want[i]) << "step " << i + 1;
    EXPECT_NEAR(gpu[i], cpu[i], 1e-4 * cpu[i]) << "step " << i + 1;
    // compute float32: selective recomputation keeps f32 values, so it follows the same steps
    EXPECT_NEAR(sel[i], want[i], 1e-4 * want[i]) << "selective, step " << i + 1;
    EXPECT_NEAR(sel1[i], want[i], 1e-4 * want[i]) << "selective + 1 layer whole, step " << i + 1;
  }
}

// With a bf16 compute dtype the GPU keeps k and v in bf16 (its KV cache's dtype) and takes the
// tensor-core attention forward and backward, which round q, the probabilities, dout and dS to
// bf16 (2^-9 relative each); the CPU keeps f32 attention. The same 8 steps from fp32 quantized on
// load (NF4 + double quant, bf16 compute) must track the CPU's: each loss within 2e-3 relative
// (bf16 rounding of the attention's terms moves a loss by ~1e-4; a gradient of the wrong sign or
// scale through q/k/v moves the trajectory by more than that over 8 steps).
std::vector<double> eight_bf16_losses(const std::string& device_map,
                                      const TrainingArguments& args = test::qlora_fixture_args()) {
  LoadOptions lo;
  lo.device_map = device_map;
  lo.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                              .bnb_4bit_compute_dtype = "bfloat16",
                                              .bnb_4bit_quant_type = "nf4",
                                              .bnb_4bit_use_double_quant = true};
  PeftModel p = PeftModel::from_pretrained(AutoModelForCausalLM::from_pretrained(llama() / "fp32", lo),
                                           llama() / "lora_init");
  LoraTrainer tr(p, args, 8);
  std::vector<double> out;
  for (int i = 0; i < 8; ++i) out.push_back(tr.train_step({TrainBatch{batch(), {}}}).loss);
  return out;
}

// Selective recomputation with a bf16 compute keeps the residual stream, q/k/v and gate/up in bf16
// (2^-9 relative each, as autocast keeps a matmul's output): the backward's terms move by that
// much, the losses by about as much as the attention's rounding does.
TEST(QLoRACuda, Bf16ComputeTracksTheCpu) {
  SKIP_WITHOUT_CUDA();
  const std::vector<double> gpu = eight_bf16_losses("cuda"), cpu = eight_bf16_losses("cpu"),
                            sel = eight_bf16_losses("cuda", selective(1));
  ASSERT_EQ(gpu.size(), 8u);
  EXPECT_LT(gpu.back(), gpu.front() - 0.1);  // it trains
  EXPECT_LT(sel.back(), sel.front() - 0.1);
  for (size_t i = 0; i < gpu.size(); ++i) {
    std::printf("bf16 step %zu loss gpu %.9f selective %.9f cpu %.9f rel %.2e / %.2e\n", i + 1, gpu[i],
                sel[i], cpu[i], std::abs(gpu[i] - cpu[i]) / cpu[i], std::abs(sel[i] - cpu[i]) / cpu[i]);
    EXPECT_NEAR(gpu[i], cpu[i], 2e-3 * cpu[i]) << "step " << i + 1;
    EXPECT_NEAR(sel[i], cpu[i], 2e-3 * cpu[i]) << "selective, step " << i + 1;
  }
}

}  // namespace
#endif
