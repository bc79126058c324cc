// QLoRA fine-tuning: a LoRA adapter on a frozen (possibly 4-bit) base model, as peft's
// PeftModel, and a trainer with transformers' Trainer semantics (AdamW as torch, gradient
// accumulation with the loss summed over the step's targets, clipping by global norm, the LR
// schedules of get_scheduler). CPU for now.
//
//   auto model = AutoModelForCausalLM::from_pretrained("base", {.quantization_config = qc});
//   auto peft = PeftModel::get_peft_model(std::move(model), LoraConfig{.r = 8, ...});
//   LoraTrainer tr(peft, TrainingArguments{.learning_rate = 2e-4}, /*total_steps=*/100);
//   StepLog s = tr.train_step({TrainBatch{{ids}, {}}});   // one optimizer step
//   peft.save_pretrained("adapter/");                    // peft's adapter_config.json + safetensors
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nibble/error.h"
#include "nibble/lora.h"
#include "nibble/model.h"

namespace nibble {

// A training loss that is NaN or infinite (the trainer stops; nothing is updated).
class NonFiniteLossError : public Error {
 public:
  using Error::Error;
};

// The Linear modules of a model as LoRA sees them, in module order (the output head last).
std::vector<LinearSite> linear_sites(const CausalLM& model);

// Loads the peft adapter folder dir onto model's Linears for inference (the model keeps the
// adapter's tensors); what `--adapter DIR` does in the CLI. ShapeError naming the tensor for an
// adapter of another base.
void attach_adapter(CausalLM& model, const std::filesystem::path& dir);

class PeftModel {
 public:
  // peft's get_peft_model: a fresh adapter (LoraAdapter::init with seed) on base's Linears
  // that cfg.target_modules selects (ConfigError listing the Linear names when none).
  static PeftModel get_peft_model(CausalLM base, const LoraConfig& cfg, uint64_t seed = 0);
  // peft's PeftModel.from_pretrained: the adapter folder dir on base (ShapeError naming the
  // tensor for an adapter of another base), for inference and further training.
  static PeftModel from_pretrained(CausalLM base, const std::filesystem::path& dir);

  PeftModel(PeftModel&&) noexcept;
  PeftModel& operator=(PeftModel&&) noexcept;
  ~PeftModel();

  // The base with the adapter attached: its forward, generate and mean_nll include the LoRA
  // term (s · B A x, no dropout).
  const CausalLM& model() const { return base_; }
  CausalLM& model() { return base_; }
  // The adapter's tensors on the host. On the CPU the model's Linears share their storage (the
  // optimizer updates them there); on a CUDA model the Linears hold device copies:
  // copy_adapter_to_device() refreshes those after the host tensors changed (a no-op on the CPU),
  // and device_adapter_changed() says the device copies are newer (LoraTrainer's device optimizer
  // steps there), so the host tensors are refreshed from the device when next read through
  // adapter() (saving, merging, inspection) rather than after every step.
  const LoraAdapter& adapter() const {
    sync_host();
    return adapter_;
  }
  LoraAdapter& adapter() {
    sync_host();
    return adapter_;
  }
  void copy_adapter_to_device();
  void device_adapter_changed() { host_stale_ = true; }
  int64_t num_trainable_parameters() const;
  // adapter_config.json (inference_mode true, base_model_name_or_path the base's folder unless
  // set) + adapter_model.safetensors, as peft writes them, each file atomically.
  void save_pretrained(const std::filesystem::path& dir) const;
  // The adapter as save_pretrained writes it (inference_mode, base_model_name_or_path set).
  LoraAdapter adapter_to_save() const;

  // The base with the adapter folded in: every adapted weight dequantized to f32, W + s·B·A
  // added, then kept in f32 (requantize false: a plain fp model) or quantized again with the
  // base's BitsAndBytesConfig (requantize true). The PeftModel is consumed.
  CausalLM merge_and_unload(bool requantize) &&;

 private:
  PeftModel(CausalLM base, LoraAdapter adapter);
  void attach();
  void sync_host() const;
  CausalLM base_;
  mutable LoraAdapter adapter_;  // refreshed from the device by sync_host() when host_stale_
  mutable bool host_stale_ = false;
};

// transformers' TrainingArguments that LoRA training uses (same names and defaults).
struct TrainingArguments {
  double learning_rate = 5e-5;
  std::string lr_scheduler_type = "linear";  // constant | constant_with_warmup | linear | cosine
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;  // 0: no clipping
  uint64_t seed = 42;          // LoRA dropout masks (and the data order in the CLI)
  bool gradient_checkpointing = false;
  // With gradient checkpointing, what a decoder layer keeps for the backward (Megatron-LM's
  // --recompute-granularity): "full" its input only, the whole layer recomputed (transformers'
  // gradient checkpointing); "selective" the residual stream, q/k/v and the MLP's gate/up outputs
  // in the compute dtype, the norms, the attention core and the activation recomputed (no
  // projection is computed twice).
  std::string recompute_granularity = "full";
  // With "selective": the first this many decoder layers recomputed whole (Megatron-LM's
  // --recompute-num-layers, block method), to trade time for memory layer by layer.
  int64_t recompute_num_layers = 0;
};

// One micro-batch: sequences of any lengths, labels unshifted as transformers takes them (empty:
// labels = input_ids; -100: no loss at that position).
struct TrainBatch {
  std::vector<std::vector<int64_t>> input_ids, labels;
};

struct StepLog {
  int64_t step = 0;          // optimizer steps done, this one included
  double loss = 0;           // mean NLL over the step's targets (all its micro-batches)
  double learning_rate = 0;  // the LR this step used
  double grad_norm = 0;      // global L2 norm before clipping
  int64_t n_tokens = 0, n_targets = 0;
  double seconds = 0;  // wall time of the step
};

// One training example of a supervised fine-tuning data set: ids and labels (-100: no loss).
struct SftExample {
  std::vector<int64_t> input_ids, labels;
};

class Tokenizer;
class ChatTemplate;

struct SftData {
  std::vector<SftExample> examples;
  int64_t truncated = 0;  // examples cut to max_seq_length
};

// A JSONL file as TRL's SFTTrainer reads its formats, one object a line:
//  {"text": ...}                    language modelling: tokens (with the tokenizer's special
//                                   tokens) + eos, loss on every token;
//  {"prompt": ..., "completion": ...} prompt tokens + completion tokens + eos, loss on the
//                                   completion only (TRL's completion_only_loss);
//  {"messages": [...]}              rendered with the chat template (tmpl), loss on the assistant
//                                   turns only (each assistant turn's tokens past the rendered
//                                   prefix with add_generation_prompt);
//  {"input_ids": [...], "labels"?}  pre-tokenized (labels default to input_ids).
// Sequences longer than max_seq_length are truncated (counted). Blank lines are skipped.
// FormatError "FILE:LINE: ..." for a bad line (not JSON, no known field, wrong types, labels
// of another length); ConfigError when the file holds no example. tok / tmpl may be null when
// the file needs them not (pre-tokenized data; no messages).
SftData load_sft_jsonl(const std::filesystem::path& file, const Tokenizer* tok, const ChatTemplate* tmpl,
                       int64_t max_seq_length);
// TRL's packing: every example's tokens (and labels) concatenated and cut into sequences of
// max_seq_length (the last one shorter).
std::vector<SftExample> pack_examples(const std::vector<SftExample>& ex, int64_t max_seq_length);

class LoraTrainer {
 public:
  // total_steps: the schedule's length (transformers' max_steps / num_training_steps).
  LoraTrainer(PeftModel& model, const TrainingArguments& args, int64_t total_steps);
  ~LoraTrainer();
  // One optimizer step over micro_batches (gradient accumulation: their number): every
  // micro-batch's gradient of sum(NLL) / (targets of the whole step), summed; clipping;
  // AdamW at the scheduled LR. NonFiniteLossError (nothing updated) when the loss or the gradient
  // norm is not finite.
  StepLog train_step(const std::vector<TrainBatch>& micro_batches);
  // Mean NLL over the targets of batches (no dropout, no update).
  double evaluate(const std::vector<TrainBatch>& batches) const;
  // Gradients of the mean NLL of one batch, by module name: {dA, dB} (testing, inspection).
  std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> gradients(const TrainBatch& b);

  int64_t global_step() const;
  // Optimizer state (AdamW moments and step) for checkpoints: optimizer.safetensors in dir.
  void save_state(const std::filesystem::path& dir) const;
  void load_state(const std::filesystem::path& dir);
  // A training checkpoint folder (transformers' checkpoint-N): peft's adapter files,
  // optimizer.safetensors and trainer_state.json (the text given), replacing dir as a whole:
  // a crash leaves the complete old folder or the complete new one (see io/atomic_dir.h).
  void save_checkpoint(const std::filesystem::path& dir, const PeftModel& model,
                       const std::string& trainer_state_json) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble
