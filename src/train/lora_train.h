// The training forward and backward of the generic decoder (causal_lm.cpp's blocks, with what
// the backward needs saved) for LoRA fine-tuning: the base is frozen, so the backward produces
// only the gradients of the adapters attached to the model's Linears (NamedLinear::lora), and
// d(loss)/d(hidden) stops at the first decoder layer's input. What the forward keeps for the
// backward is PassOptions::recompute's choice, per decoder layer.
// f32 on the model's device (CPU, or one CUDA device); the gradients come back to the host.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "models/causal_lm_impl.h"

namespace nibble::train {

// Gradients of one adapted Linear: dA [r, in], dB [out, r], added to by each pass: into the host
// vectors, or, when dA/dB are defined (f32 tensors on the model's device: a CUDA model whose
// optimizer steps there), into those in place (the host vectors then unused).
struct LoraGrad {
  std::vector<float> A, B;
  Tensor dA, dB;
};
using GradMap = std::map<const NamedLinear*, LoraGrad>;

// Sequences (any lengths) and their labels as transformers takes them (same length as the ids,
// unshifted; -100 ignored). Empty labels: labels = input_ids.
struct TokenBatch {
  std::vector<std::vector<int64_t>> input_ids, labels;
};

// What one decoder layer's forward keeps for its backward (Megatron-LM's recompute granularity):
//   None: every intermediate, f32 (the fastest; the most memory);
//   Selective: the residual stream at the layer's input and between its blocks, q/k/v as attention
//     saw them (after rope) and the MLP's gate/up outputs, in the model's cache dtype (the compute
//     dtype on CUDA with a 16-bit compute, as autocast saves a matmul's output; f32 elsewhere); the
//     norms, the attention core and the activation are recomputed in the backward (no projection);
//   Full: the layer's input only; the whole layer is recomputed (transformers' gradient checkpointing).
enum class Recompute { None, Selective, Full };

struct PassOptions {
  float grad_scale = 1.0f;  // d(sum of token NLLs * grad_scale): 1 / targets of the step
  Recompute recompute = Recompute::None;
  int64_t full_layers = 0;     // with Selective: the first this many decoder layers Full (block method)
  bool train = true;           // dropout on (a training pass)
  uint64_t dropout_seed = 0;   // the step's seed for LoRA dropout masks
  int64_t vocab_chunk = 4096;  // columns of the output head per chunk of the loss
};

struct PassResult {
  double loss_sum = 0;  // summed NLL over the targets
  int64_t n_targets = 0;
  int64_t n_tokens = 0;
};

// The targets a batch has: labels shifted within each sequence (transformers' shift).
int64_t count_targets(const TokenBatch& b);

// The output head [V, C] as the loss computes with it: f32 (converted/dequantized once), or on
// CUDA with a 16-bit compute dtype a 16-bit head as stored (the loss then computes in its dtype).
Tensor head_weight(const CausalLM::Impl& m);

// Forward and backward of one micro-batch: accumulates the adapters' gradients into grads (an
// entry for every Linear with an adapter; made on first use) and returns the summed loss.
// head_w: head_weight(m).
PassResult forward_backward(const CausalLM::Impl& m, const TokenBatch& b, const Tensor& head_w,
                            GradMap& grads, const PassOptions& o);

// The summed NLL of a batch (no backward, no dropout).
PassResult eval_loss(const CausalLM::Impl& m, const TokenBatch& b, const Tensor& head_w);

}  // namespace nibble::train
