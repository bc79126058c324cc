// QLoRA training on the CPU: TinyStories-656K quantized to NF4 + double quant while loading, a
// LoRA adapter r 8 (alpha 16) on every projection, whole optimizer steps (forward, backward,
// AdamW) on template stories (tests/support/toy_stories.h) with 1 and 2 threads, with and
// without gradient checkpointing: tokens/s (median over steps after a warm-up), the training
// loss at the start and the end, held-out perplexity before and after, and the peak RSS.
//
//   train_cpu [--model DIR] [--steps N] [--batch B] [--threads 1,2] [--json PATH]
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../tests/support/toy_stories.h"
#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/thread_pool.h"
#include "nibble/tokenizer.h"
#include "nibble/train.h"

using namespace nibble;

namespace {

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = std::string(NIBBLE_BENCH_SOURCE_DIR) + "/../shared/models/tinystories-656k", json_path;
  int64_t steps = 300, batch = 8;
  std::vector<int> thread_counts{1, 2};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model"))
      model = argv[i + 1];
    else if (!std::strcmp(argv[i], "--steps"))
      steps = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--batch"))
      batch = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--threads")) {
      thread_counts.clear();
      std::string list = argv[i + 1];
      for (size_t p = 0; p <= list.size();) {
        const size_t q = std::min(list.find(',', p), list.size());
        thread_counts.push_back(std::stoi(list.substr(p, q - p)));
        p = q + 1;
      }
    } else if (!std::strcmp(argv[i], "--json"))
      json_path = argv[i + 1];
  }
  Tokenizer tok = Tokenizer::from_pretrained(model);
  auto encode = [&](const std::vector<std::string>& texts) {
    std::vector<TrainBatch> out;
    for (size_t i = 0; i < texts.size(); i += size_t(batch)) {
      TrainBatch b;
      for (size_t j = i; j < std::min(texts.size(), i + size_t(batch)); ++j)
        b.input_ids.push_back(tok.encode(texts[j]).ids);
      out.push_back(b);
    }
    return out;
  };
  const auto train = encode(test::toy_stories(400, 7)), held_out = encode(test::toy_stories(48, 12345));
  nlohmann::json runs = nlohmann::json::array();
  for (int threads : thread_counts)
    for (bool ckpt : {false, true}) {
      set_num_threads(threads);
      LoadOptions lo;
      lo.quantization_config = BitsAndBytesConfig{
          .load_in_4bit = true, .bnb_4bit_quant_type = "nf4", .bnb_4bit_use_double_quant = true};
      LoraConfig cfg;
      cfg.r = 8;
      cfg.lora_alpha = 16;
      cfg.target_modules_str = "all-linear";
      PeftModel p = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(model, lo), cfg, 1);
      TrainingArguments a;
      a.learning_rate = 2e-3;
      a.lr_scheduler_type = "cosine";
      a.warmup_steps = 10;
      a.gradient_checkpointing = ckpt;
      // the full run once (2 threads, no checkpointing); the other configurations time 40 steps
      const int64_t n = threads == 2 && !ckpt ? steps : std::min<int64_t>(steps, 40);
      LoraTrainer tr(p, a, n);
      const double before = tr.evaluate(held_out);
      std::vector<double> rate;
      double first = 0, last = 0;
      for (int64_t s = 0; s < n; ++s) {
        const StepLog l = tr.train_step({train[size_t(s) % train.size()]});
        if (s >= 3) rate.push_back(double(l.n_tokens) / l.seconds);
        if (s < 10) first += l.loss / 10;
        if (s >= n - 10) last += l.loss / 10;
      }
      const double after = tr.evaluate(held_out);
      std::sort(rate.begin(), rate.end());
      const double med = rate.empty() ? 0 : rate[rate.size() / 2];
      nlohmann::json r{{"threads", threads},
                       {"gradient_checkpointing", ckpt},
                       {"steps", n},
                       {"batch", batch},
                       {"tokens_per_s_median", med},
                       {"train_loss_first10", first},
                       {"train_loss_last10", last},
                       {"heldout_ppl_before", std::exp(before)},
                       {"heldout_ppl_after", std::exp(after)},
                       {"peak_rss_mib", peak_rss_mib()}};
      std::printf("%s\n", r.dump().c_str());
      std::fflush(stdout);
      runs.push_back(r);
    }
  if (!json_path.empty()) {
    nlohmann::json out{{"bench", "train_cpu"}, {"model", model}, {"runs", runs}};
    std::ofstream(json_path) << out.dump(2) << "\n";
  }
  return 0;
}
