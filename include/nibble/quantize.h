// Quantizing a whole checkpoint into bitsandbytes' serialized layout, tensor by tensor, as
// transformers does when it loads a model with a BitsAndBytesConfig and saves it again:
// each quantized Linear weight `<m>.weight` becomes the packed weight plus its quant-state
// entries (4-bit) or the int8 CB plus `<m>.SCB` (8-bit); every other tensor is kept as is.
//
// Which tensors count as Linear weights is decided by a predicate. Until the model layer's
// architecture specs exist, default_linear_predicate() uses the rule that holds for the
// decoder-only models transformers ships: 2-D `*.weight` tensors that are not embeddings
// (embed, wte, wpe, word_embeddings) and not the output head or a tied alias of it, minus
// llm_int8_skip_modules (name equal to a key, or containing key + ".").
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nibble/bnb_config.h"
#include "nibble/safetensors.h"
#include "nibble/tensor.h"

namespace nibble {

struct TensorQuantReport {
  std::string name;         // the weight's name, e.g. model.layers.0.mlp.up_proj.weight
  Shape shape;
  DType dtype;              // on disk
  std::string format;       // "nf4", "fp4", "int8" or "kept"
  std::string skip_reason;  // for kept 2-D weights: "output head", "embedding", "user list"
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;   // packed weight (or int8 CB, or the kept tensor)
  int64_t state_bytes = 0;   // absmax, maps, nested state, JSON blob, SCB
  double rel_error = 0;      // ||W - deq(Q(W))||_F / ||W||_F (quantized tensors)
  double max_abs_error = 0;
};

struct CheckpointQuantization {
  std::map<std::string, Tensor> state_dict;  // bitsandbytes layout, host tensors
  std::vector<TensorQuantReport> tensors;    // one per input tensor, in name order
  double seconds = 0;                        // quantization time (error measurement excluded)
  int64_t params_total = 0, params_quantized = 0;
  int64_t bytes_before = 0, bytes_after = 0;  // all tensors, quant state included
};

using LinearPredicate = std::function<std::string(const std::string& name, const Shape& shape)>;
// Returns "" to quantize, or the reason the tensor stays unquantized.
LinearPredicate default_linear_predicate(const Checkpoint& ck, const BitsAndBytesConfig& qc);

struct QuantizeOptions {
  LinearPredicate predicate;   // default_linear_predicate when empty
  bool measure_error = true;   // dequantize each weight again to report its error
  Device device = Device::cpu();  // where the quantization kernels run
};

CheckpointQuantization quantize_checkpoint(const Checkpoint& ck, const BitsAndBytesConfig& qc,
                                           const QuantizeOptions& opts = {});

}  // namespace nibble
