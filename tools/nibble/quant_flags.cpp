// The transformers-spelled quantization flags (--load-in-4bit, --bnb-4bit-quant-type, ...),
// shared by every command that loads a model, and the model loading those commands share:
// quantize while loading when a flag asks for it, progress on stderr when it is a terminal.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "commands.h"
#include "nibble/train.h"
#include "nibble/model.h"

namespace nibble::cli {

BitsAndBytesConfig QuantFlags::to_config() const {
  BitsAndBytesConfig c;
  c.load_in_4bit = load_in_4bit;
  c.load_in_8bit = load_in_8bit;
  c.bnb_4bit_quant_type = quant_type;
  c.bnb_4bit_use_double_quant = double_quant;
  if (!compute_dtype.empty()) c.bnb_4bit_compute_dtype = compute_dtype;
  if (!quant_storage.empty()) c.bnb_4bit_quant_storage = quant_storage;
  c.llm_int8_threshold = int8_threshold;
  if (!skip_modules.empty()) c.llm_int8_skip_modules = skip_modules;
  c.validate();
  return c;
}

void add_quant_flags(CLI::App& cmd, QuantFlags& f) {
  cmd.add_flag("--load-in-4bit", f.load_in_4bit, "quantize Linear weights to 4 bits (NF4/FP4)");
  cmd.add_flag("--load-in-8bit", f.load_in_8bit, "quantize Linear weights with LLM.int8");
  cmd.add_option("--bnb-4bit-quant-type", f.quant_type, "nf4 or fp4 (default fp4, as transformers)");
  cmd.add_flag("--bnb-4bit-use-double-quant", f.double_quant,
               "quantize the absmax too (~0.37 bit/param saved)");
  cmd.add_option("--bnb-4bit-compute-dtype", f.compute_dtype, "float32 | bfloat16 | float16");
  cmd.add_option("--bnb-4bit-quant-storage", f.quant_storage,
                 "storage dtype of packed weights (default uint8)");
  cmd.add_option("--llm-int8-threshold", f.int8_threshold, "outlier threshold of LLM.int8 (default 6.0)");
  cmd.add_option("--llm-int8-skip-modules", f.skip_modules,
                 "modules left unquantized (default: the output head)");
  cmd.add_option("--device-map", f.device_map,
                 "where the model runs: cpu, cuda, cuda:N or auto (default: the first GPU if any, else cpu); "
                 "balanced, balanced_low_0, sequential; or MODULE=DEVICE,... (placement as transformers computes it)");
  cmd.add_option("--max-memory", f.max_memory, "memory budgets for the placement, e.g. cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB");
}

void apply_placement_flags(LoadOptions& opts, const QuantFlags& q) {
  opts.device_map = q.device_map;
  if (!q.max_memory.empty()) opts.max_memory = parse_max_memory(q.max_memory);
  if (q.device_map.find('=') == std::string::npos) return;
  opts.device_map_modules = parse_explicit_device_map(q.device_map);
}

void add_adapter_flag(CLI::App& cmd, QuantFlags& f) {
  cmd.add_option("--adapter", f.adapter, "a peft LoRA adapter folder to apply (adapter_config.json + adapter_model.safetensors)");
}

bool QuantFlags::any() const {
  return load_in_4bit || load_in_8bit;
}

bool stderr_is_terminal() {
  return isatty(fileno(stderr)) != 0;
}

CausalLM load_model(const std::string& dir, const QuantFlags& q) {
  LoadOptions opts;
  if (q.any()) opts.quantization_config = q.to_config();
  apply_placement_flags(opts, q);
  if (!q.adapter.empty() && q.device_map == "auto") opts.device_map = "cpu";  // LoRA runs on the CPU
  const bool progress = stderr_is_terminal();
  if (progress) {
    std::string how;
    if (q.load_in_4bit)
      how = " (quantizing to 4-bit " + q.quant_type + (q.double_quant ? " + double quant)" : ")");
    if (q.load_in_8bit) how = " (quantizing to LLM.int8)";
    std::fprintf(stderr, "loading %s%s ...", dir.c_str(), how.c_str());
    std::fflush(stderr);
  }
  auto t0 = std::chrono::steady_clock::now();
  CausalLM model = AutoModelForCausalLM::from_pretrained(dir, opts);
  if (!q.adapter.empty()) attach_adapter(model, q.adapter);
  if (progress)
    std::fprintf(stderr, " done in %.2f s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return model;
}

}  // namespace nibble::cli
