// The golden check of a loaded model against transformers' reference.safetensors of a fixture
// model (logits of the reference batch within the variant's tolerance, greedy tokens), shared by
// the CPU golden tests and the CUDA ones.
#pragma once

#include <filesystem>
#include <string>

#include "nibble/model.h"

namespace nibble::test {

// max |diff| / max |logit| allowed for a variant (fp32, nf4_dq, fp4, int8).
double tolerance(const std::string& variant);
// Logits of the reference batch (one forward_batch) and greedy tokens of the first prompt;
// greedy equality is asserted when check_greedy, reported otherwise. Returns the relative error.
double check_model(const std::filesystem::path& dir, const std::string& variant, const CausalLM& model,
                   bool check_greedy);

}  // namespace nibble::test
