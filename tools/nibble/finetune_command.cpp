// `nibble finetune MODEL --data FILE.jsonl --output-dir DIR [LoRA / training / quant flags]`:
// QLoRA fine-tuning with transformers' / peft's / TRL's flag names. The model is loaded (and
// quantized while loading with the quant flags), a LoRA adapter is made (or --adapter /
// --resume-from-checkpoint loaded), and LoraTrainer runs the optimizer steps; every logging
// step appends a JSON line to DIR/training_log.jsonl, every --save-steps writes
// DIR/checkpoint-N (adapter + optimizer + trainer state) atomically, and the adapter goes to
// DIR as peft writes it. A progress line on stderr when it is a terminal.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "io/read_file.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/thread_pool.h"
#include "nibble/tokenizer.h"
#include "nibble/train.h"

namespace fs = std::filesystem;

namespace nibble::cli {

void add_finetune_command(CLI::App& app, FinetuneArgs& a) {
  CLI::App* cmd =
      app.add_subcommand("finetune", "train a LoRA adapter on a (quantized) model (QLoRA), on one GPU or the CPU");
  cmd->add_option("MODEL", a.model, "base model folder")->required();
  cmd->add_option("--data", a.data,
                  "JSONL training data: {text} | {prompt, completion} | {messages} | {input_ids[, labels]}")
      ->required();
  cmd->add_option("--output-dir", a.output_dir, "where the adapter, checkpoints and training_log.jsonl go")
      ->required();
  cmd->add_option("--eval-data", a.eval_data,
                  "JSONL held-out data: eval_loss logged at each save and at the end");
  cmd->add_option("--adapter", a.adapter, "start from this peft adapter folder (continued training)");
  cmd->add_option("--resume-from-checkpoint", a.resume, "continue the run saved in this checkpoint-N folder");
  // peft LoraConfig
  cmd->add_option("--lora-r", a.lora_r, "LoRA rank (default 8)");
  cmd->add_option("--lora-alpha", a.lora_alpha, "LoRA alpha: scaling alpha / r (default 8, as peft)");
  cmd->add_option("--lora-dropout", a.lora_dropout, "dropout on the LoRA input (default 0)");
  cmd->add_option(
         "--target-modules", a.target_modules,
         "module names (suffixes) to adapt, comma or space separated, or all-linear (default all-linear)")
      ->delimiter(',');
  cmd->add_flag("--use-rslora", a.use_rslora, "scaling alpha / sqrt(r)");
  // transformers TrainingArguments / TRL SFTConfig
  cmd->add_option("--learning-rate", a.learning_rate, "peak learning rate (default 2e-4)");
  cmd->add_option("--lr-scheduler-type", a.lr_scheduler_type,
                  "constant | constant_with_warmup | linear | cosine (default linear)");
  cmd->add_option("--warmup-steps", a.warmup_steps, "linear warmup steps (overrides --warmup-ratio)");
  cmd->add_option("--warmup-ratio", a.warmup_ratio, "warmup as a fraction of the steps");
  cmd->add_option("--num-train-epochs", a.num_train_epochs, "epochs (default 3)");
  cmd->add_option("--max-steps", a.max_steps, "optimizer steps; overrides --num-train-epochs when > 0");
  cmd->add_option("--per-device-train-batch-size", a.batch_size, "sequences per micro-batch (default 8)");
  cmd->add_option("--gradient-accumulation-steps", a.grad_accum,
                  "micro-batches per optimizer step (default 1)");
  cmd->add_option("--max-seq-length,--max-length", a.max_seq_length,
                  "longer sequences are truncated (default 1024)");
  cmd->add_option("--packing", a.packing,
                  "true: concatenate examples into max-seq-length blocks (default false)");
  cmd->add_option("--gradient-checkpointing", a.gradient_checkpointing,
                  "true: recompute each decoder layer in the backward (default false)");
  cmd->add_option("--recompute-granularity", a.recompute_granularity,
                  "with --gradient-checkpointing: full (the whole layer) or selective (keep the residual "
                  "stream, q/k/v and gate/up in the compute dtype; recompute the norms, attention and "
                  "activation) (default full)")
      ->check(CLI::IsMember({"full", "selective"}));
  cmd->add_option("--recompute-num-layers", a.recompute_num_layers,
                  "with selective granularity: the first N layers recomputed whole (default 0)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-grad-norm", a.max_grad_norm, "clip the global gradient norm (0: off; default 1.0)");
  cmd->add_option("--weight-decay", a.weight_decay, "AdamW weight decay (default 0)");
  cmd->add_option("--adam-beta1", a.adam_beta1, "default 0.9");
  cmd->add_option("--adam-beta2", a.adam_beta2, "default 0.999");
  cmd->add_option("--adam-epsilon", a.adam_epsilon, "default 1e-8");
  cmd->add_option("--seed", a.seed, "data order, adapter init and dropout (default 42)");
  cmd->add_option("--logging-steps", a.logging_steps, "log every N steps (default 10, as TRL)");
  cmd->add_option("--save-steps", a.save_steps, "checkpoint every N steps (default 500; 0: none)");
  add_quant_flags(*cmd, a.q);
}

namespace {

std::string fmt_time(double s) {
  const int64_t t = int64_t(std::max(0.0, s));
  char b[32];
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60),
                  (long long)(t % 60));
  else
    std::snprintf(b, sizeof b, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return b;
}

// The micro-batches of optimizer step `step` (0-based): micro-batch k of the run is batch
// k % per_epoch of epoch k / per_epoch, each epoch a fresh permutation seeded by seed + epoch.
std::vector<TrainBatch> micro_batches(const std::vector<SftExample>& ex, int64_t step, int64_t bs, int64_t ga,
                                      uint64_t seed) {
  const int64_t n = int64_t(ex.size()), per_epoch = (n + bs - 1) / bs;
  std::vector<TrainBatch> out;
  int64_t cached_epoch = -1;
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t k = step * ga; k < (step + 1) * ga; ++k) {
    const int64_t epoch = k / per_epoch, i = k % per_epoch;
    if (epoch != cached_epoch) {
      std::iota(perm.begin(), perm.end(), 0);
      std::mt19937_64 g(seed + uint64_t(epoch));
      std::shuffle(perm.begin(), perm.end(), g);
      cached_epoch = epoch;
    }
    TrainBatch b;
    for (int64_t j = i * bs; j < std::min(n, (i + 1) * bs); ++j) {
      b.input_ids.push_back(ex[size_t(perm[size_t(j)])].input_ids);
      b.labels.push_back(ex[size_t(perm[size_t(j)])].labels);
    }
    out.push_back(std::move(b));
  }
  return out;
}

std::vector<TrainBatch> eval_batches(const std::vector<SftExample>& ex, int64_t bs) {
  std::vector<TrainBatch> out;
  for (size_t i = 0; i < ex.size(); i += size_t(bs)) {
    TrainBatch b;
    for (size_t j = i; j < std::min(ex.size(), i + size_t(bs)); ++j) {
      b.input_ids.push_back(ex[j].input_ids);
      b.labels.push_back(ex[j].labels);
    }
    out.push_back(std::move(b));
  }
  return out;
}

// checkpoint-N: adapter, optimizer state, trainer_state.json, replacing the folder as a whole
// (a crash leaves a complete checkpoint folder or none).
void save_checkpoint(const fs::path& out, const PeftModel& peft, const LoraTrainer& tr,
                     const nlohmann::json& state) {
  tr.save_checkpoint(out / ("checkpoint-" + std::to_string(tr.global_step())), peft, state.dump(2));
}

}  // namespace

int run_finetune(const FinetuneArgs& a) {
  if (a.batch_size < 1) throw ConfigError("--per-device-train-batch-size must be >= 1");
  if (a.grad_accum < 1) throw ConfigError("--gradient-accumulation-steps must be >= 1");
  if (a.logging_steps < 1) throw ConfigError("--logging-steps must be >= 1");
  const bool tty = stderr_is_terminal();
  // data first: bad input fails before the model loads
  std::optional<Tokenizer> tok;
  if (fs::exists(fs::path(a.model) / "tokenizer.json")) tok = Tokenizer::from_pretrained(a.model);
  std::optional<ChatTemplate> tmpl;
  try {
    tmpl = ChatTemplate::from_pretrained(a.model);
  } catch (const Error&) {
  }
  SftData data = load_sft_jsonl(a.data, tok ? &*tok : nullptr, tmpl ? &*tmpl : nullptr, a.max_seq_length);
  std::vector<SftExample> train = a.packing ? pack_examples(data.examples, a.max_seq_length) : data.examples;
  std::vector<SftExample> eval;
  if (!a.eval_data.empty())
    eval = load_sft_jsonl(a.eval_data, tok ? &*tok : nullptr, tmpl ? &*tmpl : nullptr, a.max_seq_length)
               .examples;

  QuantFlags q = a.q;
  // training runs on one device: the first GPU when there is one (auto), else the CPU
  if (q.device_map == "auto") q.device_map = cuda_available() ? "cuda" : "cpu";
  CausalLM base = load_model(a.model, q);
  std::optional<PeftModel> peft;
  if (!a.resume.empty()) {
    peft.emplace(PeftModel::from_pretrained(std::move(base), a.resume));
  } else if (!a.adapter.empty()) {
    peft.emplace(PeftModel::from_pretrained(std::move(base), a.adapter));
  } else {
    LoraConfig cfg;
    cfg.r = a.lora_r;
    cfg.lora_alpha = a.lora_alpha;
    cfg.lora_dropout = a.lora_dropout;
    cfg.use_rslora = a.use_rslora;
    if (a.target_modules.empty() || (a.target_modules.size() == 1 && a.target_modules[0] == "all-linear"))
      cfg.target_modules_str = "all-linear";
    else
      cfg.target_modules = a.target_modules;
    cfg.base_model_name_or_path = a.model;
    peft.emplace(PeftModel::get_peft_model(std::move(base), cfg, a.seed));
  }
  if (!a.resume.empty() || !a.adapter.empty()) peft->adapter().config.inference_mode = false;

  // ids and labels against the vocabulary, naming the file and example (not an index error mid-run)
  const int64_t vocab = peft->model().config().vocab_size;
  for (const auto& [file, exs] : {std::pair{&a.data, &data.examples}, std::pair{&a.eval_data, &eval}})
    for (size_t i = 0; i < exs->size(); ++i)
      for (size_t t = 0; t < (*exs)[i].input_ids.size(); ++t) {
        const int64_t id = (*exs)[i].input_ids[t], lab = (*exs)[i].labels[t];
        if (id < 0 || id >= vocab || (lab != -100 && (lab < 0 || lab >= vocab)))
          throw ConfigError(*file + ": example " + std::to_string(i + 1) + ": token id " +
                            std::to_string(id < 0 || id >= vocab ? id : lab) +
                            " is outside the vocabulary of " + std::to_string(vocab) +
                            " (-100 is the only label allowed outside it)");
      }
  const int64_t n = int64_t(train.size()), per_epoch = (n + a.batch_size - 1) / a.batch_size;
  const int64_t steps_per_epoch = std::max<int64_t>(1, (per_epoch + a.grad_accum - 1) / a.grad_accum);
  const int64_t total =
      a.max_steps > 0
          ? a.max_steps
          : std::max<int64_t>(1, int64_t(std::ceil(a.num_train_epochs * double(steps_per_epoch))));
  TrainingArguments ta;
  ta.learning_rate = a.learning_rate;
  ta.lr_scheduler_type = a.lr_scheduler_type;
  ta.warmup_steps = a.warmup_steps;
  ta.warmup_ratio = a.warmup_ratio;
  ta.weight_decay = a.weight_decay;
  ta.adam_beta1 = a.adam_beta1;
  ta.adam_beta2 = a.adam_beta2;
  ta.adam_epsilon = a.adam_epsilon;
  ta.max_grad_norm = a.max_grad_norm;
  ta.seed = a.seed;
  ta.gradient_checkpointing = a.gradient_checkpointing;
  ta.recompute_granularity = a.recompute_granularity;
  ta.recompute_num_layers = a.recompute_num_layers;
  LoraTrainer tr(*peft, ta, total);
  if (!a.resume.empty()) {
    // the data order and the schedule follow from these: a resumed run must keep them
    const fs::path state_path = fs::path(a.resume) / "trainer_state.json";
    nlohmann::json st;
    try {
      st = io::parse_json(io::read_text_file(state_path));
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(state_path.string() + ": not valid JSON (" + e.what() + ")");
    }
    const std::pair<const char*, int64_t> keep[] = {{"seed", int64_t(a.seed)},
                                                    {"per_device_train_batch_size", a.batch_size},
                                                    {"gradient_accumulation_steps", a.grad_accum},
                                                    {"train_sequences", n},
                                                    {"total_steps", total}};
    for (const auto& [k, v] : keep) {
      if (!st.contains(k)) continue;
      if (!st[k].is_number_integer())
        throw FormatError(std::string("--resume-from-checkpoint: trainer_state.json: '") + k +
                          "' is not an integer");
      if (st[k].get<int64_t>() != v)
        throw ConfigError(std::string("--resume-from-checkpoint: ") + k + " is " + std::to_string(v) +
                          ", the checkpoint's run had " + std::to_string(st[k].get<int64_t>()) +
                          " (resume with the same data and flags)");
    }
    tr.load_state(a.resume);
  }

  const fs::path out = a.output_dir;
  fs::create_directories(out);
  std::ofstream log(out / "training_log.jsonl", a.resume.empty() ? std::ios::trunc : std::ios::app);
  if (!log) throw IoError("cannot write " + (out / "training_log.jsonl").string());
  auto log_line = [&](const nlohmann::json& j) {
    log << j.dump() << "\n";
    log.flush();
  };
  if (a.resume.empty())
    log_line({{"event", "start"},
              {"examples", data.examples.size()},
              {"sequences", n},
              {"truncated", data.truncated},
              {"max_seq_length", a.max_seq_length},
              {"total_steps", total},
              {"trainable_parameters", peft->num_trainable_parameters()},
              {"device", peft->model().device().str()},
              {"threads", num_threads()}});
  auto state_json = [&]() {
    return nlohmann::json{{"global_step", tr.global_step()},
                          {"total_steps", total},
                          {"seed", a.seed},
                          {"per_device_train_batch_size", a.batch_size},
                          {"gradient_accumulation_steps", a.grad_accum},
                          {"train_sequences", n},
                          {"micro_batches_done", tr.global_step() * a.grad_accum},
                          {"epoch", double(tr.global_step()) / double(steps_per_epoch)}};
  };
  auto eval_loss = [&]() { return tr.evaluate(eval_batches(eval, a.batch_size)); };

  std::string last_ckpt;
  double win_loss = 0, win_seconds = 0, run_seconds = 0;
  int64_t win_targets = 0, win_tokens = 0, run_tokens = 0, done_here = 0;
  StepLog s;
  while (tr.global_step() < total) {
    const int64_t step = tr.global_step();
    try {
      s = tr.train_step(micro_batches(train, step, a.batch_size, a.grad_accum, a.seed));
    } catch (const NonFiniteLossError& e) {
      throw NonFiniteLossError(std::string(e.what()) + "; stopped, last good checkpoint: " +
                               (last_ckpt.empty() ? "none" : last_ckpt));
    }
    ++done_here;
    win_loss += s.loss * double(s.n_targets);
    win_targets += s.n_targets;
    win_tokens += s.n_tokens;
    win_seconds += s.seconds;
    run_tokens += s.n_tokens;
    run_seconds += s.seconds;
    if (s.step % a.logging_steps == 0 || s.step == total) {
      log_line({{"step", s.step},
                {"epoch", double(s.step) / double(steps_per_epoch)},
                {"loss", win_loss / double(win_targets)},
                {"learning_rate", s.learning_rate},
                {"grad_norm", s.grad_norm},
                {"tokens_per_s", double(win_tokens) / std::max(win_seconds, 1e-9)},
                {"truncated", data.truncated}});
      win_loss = win_seconds = 0;
      win_targets = win_tokens = 0;
    }
    if (a.save_steps > 0 && s.step % a.save_steps == 0 && s.step < total) {
      save_checkpoint(out, *peft, tr, state_json());
      last_ckpt = (out / ("checkpoint-" + std::to_string(s.step))).string();
      if (!eval.empty()) log_line({{"step", s.step}, {"eval_loss", eval_loss()}});
    }
    if (tty) {
      const double rate = double(run_tokens) / std::max(run_seconds, 1e-9);
      const double eta = run_seconds / double(done_here) * double(total - s.step);
      const int width = 20, filled = int(double(width) * double(s.step) / double(total));
      std::fprintf(stderr, "\r[%s%s] step %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s ",
                   std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(),
                   (long long)s.step, (long long)total, s.loss, s.learning_rate, rate, fmt_time(eta).c_str());
      std::fflush(stderr);
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  peft->save_pretrained(out);
  nlohmann::json summary{{"event", "end"},
                         {"global_step", tr.global_step()},
                         {"train_loss", s.loss},
                         {"train_runtime", run_seconds},
                         {"tokens_per_s", double(run_tokens) / std::max(run_seconds, 1e-9)},
                         {"truncated", data.truncated},
                         {"adapter", out.string()}};
  if (!eval.empty()) summary["eval_loss"] = eval_loss();
  log_line(summary);
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace nibble::cli
