// Quantization verification as a report: the checks of the seed's "Verify Quantization" step
// (memory footprint, layer types, weight dtypes, configuration, generation, serialization round
// trip) plus per-layer quantization error against the original weights and logit agreement
// (KL divergence, top-1, perplexities) over a text, each a named pass/fail with a detail line.
//
//   CausalLM q = AutoModelForCausalLM::from_pretrained("model", {.quantization_config = qc});
//   VerifyReport r = verify(q, {.prompt_ids = ids});
//   if (!r.passed()) std::puts(r.to_table().c_str());
//
// The library works on token ids; the CLI (`nibble verify`) tokenizes text. The unquantized
// reference is the folder the model was quantized from (quantize-on-load) or
// VerifyOptions::reference (pre-quantized folders); it is loaded only for the checks that need
// it, memory-mapped in its stored precision, and dropped again (see verify.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/model_config.h"

namespace nibble {

struct VerifyOptions {
  // The unquantized model. Default: the folder the model was loaded from when it was quantized
  // on load; a pre-quantized model without it gets no per-layer error or logit checks.
  std::optional<std::filesystem::path> reference = {};
  // Generation: greedy continuation of prompt_ids (no generation check when empty).
  std::vector<int64_t> prompt_ids = {};
  int64_t max_new_tokens = 10;  // as transformers' bitsandbytes tests
  // The generation check fails when fewer than this fraction of the new tokens equal the
  // reference's greedy tokens (0: agreement is reported only).
  double min_token_agreement = 0.0;
  // Acceptable decoded outputs (prompt + continuation, as transformers' tests decode them);
  // when non-empty the output must be one of them. decode turns ids into that text; without
  // it the ids are written as decimal numbers separated by single spaces.
  std::vector<std::string> expected_outputs = {};
  std::function<std::string(const std::vector<int64_t>&)> decode = {};
  // Logit agreement over these ids (no logit check when fewer than 2), in chunks.
  std::vector<int64_t> text_ids = {};
  int64_t chunk_tokens = 512;  // capped by max_position_embeddings
  // Pass criteria. KL is the measure that holds for any model; top-1 agreement is reported but
  // by default not required, since near-uniform next-token distributions (random-weight or
  // undertrained models) flip their argmax under any perturbation.
  // Measured: TinyStories-656k (hidden 128) NF4 + double quant 0.065, LLM.int8 0.001; with
  // every absmax scaled by 1.5 (tests/golden/test_verify_broken.cpp) far above.
  double max_kl = 0.1;    // mean KL(reference || quantized) in nats per position
  double min_top1 = 0.0;  // fraction of positions whose argmax agrees
  // Serialization round trip through a temporary folder (save_pretrained + load).
  bool round_trip = true;
  std::optional<std::filesystem::path> work_dir = {};  // default: the system temp folder
};

struct VerifyCheck {
  std::string name;  // footprint, layer_types, weight_dtypes, configuration, generation,
                     // round_trip, layer_error, logits
  bool passed = false;
  std::string detail;
};

// Footprint arithmetic. footprint_bytes follows transformers' get_memory_footprint (parameters
// and buffers; a 4-bit weight as its packed bytes; absmax, quant maps, nested state, SCB not
// counted); true_bytes adds all quantization state.
struct FootprintReport {
  int64_t footprint_bytes = 0;
  int64_t footprint_16bit_bytes = 0;  // the same model unquantized, parameters in 16 bit
  double ratio_vs_16bit = 0;
  int64_t true_bytes = 0;
  int64_t params_total = 0;
  int64_t params_quantized = 0;
  double bits_per_param = 0;  // quantized layers: (packed + all state) bits / their parameters
};

struct LayerReport {
  std::string name;
  std::string klass;   // Linear, Linear4bit, Linear8bitLt
  std::string format;  // nf4, fp4, int8, fp
  std::string dtype;   // of the stored weight (uint8 packed, int8, or the float dtype)
  std::string compute_dtype;
  std::vector<int64_t> shape;  // [out, in]
  int64_t bytes = 0;           // counted by get_memory_footprint (weight + bias)
  int64_t state_bytes = 0;     // quantization state beyond that
  std::string skip_reason;     // unquantized Linear: output head, tied, keep-in-fp32, user list
  bool has_error = false;      // the error figures below were measured
  double rel_error = 0;        // ||W - deq(Q(W))||_F / ||W||_F
  double snr_db = 0;           // 20 log10(||W||_F / ||W - deq||_F)
  double max_abs_error = 0;
  double norm_mean_abs_error = 0;  // mean |W - deq| / (sqrt(pi/2) mean |W|): bitsandbytes' randn measure
  double error_limit = 0;          // what norm_mean_abs_error must stay under
  bool flagged = false;
};

struct LogitReport {
  int64_t positions = 0;
  double mean_kl = 0;  // KL(reference || quantized), nats per position
  double top1_agreement = 0;
  double perplexity = 0, reference_perplexity = 0;
};

struct GenerationReport {
  std::vector<int64_t> output, reference_output;  // prompt + new tokens
  int64_t agreeing = 0, compared = 0;             // new tokens equal at the same position
  int64_t first_divergence = -1;                  // index among the new tokens, -1 when none
  std::string text;
};

struct VerifyReport {
  std::vector<VerifyCheck> checks;
  FootprintReport footprint;
  std::vector<LayerReport> layers;
  std::optional<GenerationReport> generation;
  std::optional<LogitReport> logits;
  std::vector<std::string> notes;  // checks not run and why

  bool passed() const;
  const VerifyCheck* check(const std::string& name) const;  // nullptr when not run
  // {"checks": [{"name", "passed", "detail"}], "footprint": {...}, "layers": [...], ...}
  nlohmann::json to_json() const;
  std::string to_table() const;  // the terminal rendering
};

VerifyReport verify(const CausalLM& model, const VerifyOptions& options = {});

// get_memory_footprint of the model a config describes, without weights: non-quantized
// parameters in param_dtype (transformers loads quantized models in float16 by default),
// quantized Linear weights as packed 4-bit / int8 bytes. qc absent or not quantizable: the
// unquantized model. Throws ConfigError for architectures nibble does not know.
FootprintReport footprint_from_config(const ModelConfig& config, const std::optional<BitsAndBytesConfig>& qc,
                                      DType param_dtype = DType::F16);

}  // namespace nibble

namespace nibble {

// One leaf module of a loaded model for `nibble inspect`: what transformers' module tree shows
// plus its storage. bytes is what get_memory_footprint counts (0 for a head tied to the
// embedding); state_bytes the quantization state beyond that.
struct ModuleReport {
  std::string name, klass;
  std::string dtype;           // the weight's stored dtype (uint8 for packed 4-bit)
  std::vector<int64_t> shape;  // the weight's logical shape ([out, in] for Linear)
  int64_t params = 0;          // weight + bias elements (logical)
  int64_t bytes = 0;
  int64_t state_bytes = 0;
};
std::vector<ModuleReport> module_report(const CausalLM& model);
// The footprint figures of a loaded model (what verify() reports), without running any check.
FootprintReport footprint_report(const CausalLM& model);

}  // namespace nibble
