// The golden check of a loaded model against transformers' reference.safetensors of a fixture
// model (logits of the reference batch within the variant's tolerance, greedy tokens), shared by
// the CPU golden tests and the CUDA ones.
#pragma once

#include <filesystem>
#include <string>

#include "nibble/model.h"
#include "nibble/train.h"

namespace nibble::test {

// max |diff| / max |logit| allowed for a variant (fp32, nf4_dq, fp4, int8).
double tolerance(const std::string& variant);
// Logits of the reference batch (one forward_batch) and greedy tokens of the first prompt;
// greedy equality is asserted when check_greedy, reported otherwise. Returns the relative error.
double check_model(const std::filesystem::path& dir, const std::string& variant, const CausalLM& model,
                   bool check_greedy);

// Greedy tokens that may part from the reference only where the reference's GPU summation order
// can flip a near tie (LLM.int8: fp16 activations, bitsandbytes' int8 GEMM). The reference
// sequence `want` is fed as transformers generated it (the prompt, then one token a step); at
// every step the reference's token must score within tol * max|logit| of nibble's best, and
// nibble's own greedy tokens must equal the reference's for the first N new tokens, N being the
// steps before the first whose top-2 margin is within that tolerance. Returns N (printed).
size_t check_greedy_near_ties(const CausalLM& model, const std::vector<int64_t>& want, size_t prompt_len,
                              double tol, const std::string& label);

// The TrainingArguments of the QLoRA fixture's reference loop (fixtures/models/llama,
// reference.json "lora"): lr 1e-3 constant, no weight decay, no gradient clipping.
TrainingArguments qlora_fixture_args();

}  // namespace nibble::test
