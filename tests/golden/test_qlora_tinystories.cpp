// A short real QLoRA run: TinyStories-656K quantized to NF4 + double quant while loading, a
// LoRA adapter (r 8, alpha 16, every projection), 120 AdamW steps (batch 4, cosine schedule
// with warmup) on template stories; the training loss falls and the perplexity of held-out
// stories of the same style drops. The numbers are printed (the README quotes them).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/thread_pool.h"
#include "nibble/tokenizer.h"
#include "nibble/train.h"
#include "test_support.h"
#include "toy_stories.h"

using namespace nibble;

TEST(QLoRATinyStories, LossFallsAndHeldOutPerplexityDrops) {
  const auto dir = test::shared_root() / "models" / "tinystories-656k";
  Tokenizer tok = Tokenizer::from_pretrained(dir);
  LoadOptions lo;
  lo.quantization_config = BitsAndBytesConfig{
      .load_in_4bit = true, .bnb_4bit_quant_type = "nf4", .bnb_4bit_use_double_quant = true};
  LoraConfig cfg;
  cfg.r = 8;
  cfg.lora_alpha = 16;
  cfg.target_modules_str = "all-linear";
  PeftModel p = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(dir, lo), cfg, 1);
  auto encode = [&](const std::vector<std::string>& texts) {
    std::vector<TrainBatch> out;
    for (size_t i = 0; i < texts.size(); i += 4) {
      TrainBatch b;
      for (size_t j = i; j < std::min(texts.size(), i + 4); ++j)
        b.input_ids.push_back(tok.encode(texts[j]).ids);
      out.push_back(b);
    }
    return out;
  };
  const auto train = encode(test::toy_stories(160, 7)), held_out = encode(test::toy_stories(24, 12345));
  TrainingArguments a;
  a.learning_rate = 2e-3;
  a.lr_scheduler_type = "cosine";
  a.warmup_steps = 10;
  const int64_t steps = 120;
  LoraTrainer tr(p, a, steps);
  const double before = tr.evaluate(held_out);
  double first = 0, last = 0, secs = 0;
  int64_t tokens = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const StepLog l = tr.train_step({train[size_t(s) % train.size()]});
    if (s < 10) first += l.loss / 10;
    if (s >= steps - 10) last += l.loss / 10;
    secs += l.seconds;
    tokens += l.n_tokens;
  }
  const double after = tr.evaluate(held_out);
  std::printf(
      "TinyStories NF4+DQ QLoRA r8: train loss %.3f -> %.3f (mean of first/last 10 steps); held-out loss "
      "%.3f -> %.3f, perplexity %.2f -> %.2f; %lld steps, %.0f tokens/s (%d threads)\n",
      first, last, before, after, std::exp(before), std::exp(after), (long long)steps, double(tokens) / secs,
      num_threads());
  EXPECT_LT(last, 0.7 * first);
  EXPECT_LT(std::exp(after), 0.6 * std::exp(before));
}
