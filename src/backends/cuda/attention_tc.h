// Prefill attention on tensor cores (attention_tc.cu), taken by cuda::attention (attention_split.cu,
// the op's one dispatch point) where it fits: a 16-bit K/V cache, D = Dv in {32, 64, 80, 96, 128},
// 16 or more query rows at host positions, 16-byte aligned K/V rows.
#pragma once

#include "backends/cuda/launch.h"
#include "backends/cuda/nn_cuda.h"

namespace nibble::cuda {

// NIBBLE_ATTN_TC=0 keeps attention (prefill, and the training backward) on the f32 SIMT kernels
// (benchmarks, A/B checks).
bool attention_tc_enabled();
bool attention_prefill_tc_fits(const Attention& a);
void attention_prefill_tc(const Launch& l, const Attention& a);

}  // namespace nibble::cuda
