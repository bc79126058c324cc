// The tensor-core backward of causal self-attention (train_attention_tc.cu), taken by
// cuda::attention_backward (train_attention.cu, the op's one CUDA entry point) for 16-bit k/v.
#pragma once

#include <cstddef>

#include "backends/cuda/train_cuda.h"

namespace nibble::cuda {

// Workspace beyond the row statistics: each query head's dk and dv when Hq > Hkv (else 0).
size_t attention_backward_tc_partials_bytes(const AttentionBackward& a);
void attention_backward_tc(const Launch& l, const AttentionBackward& a);

}  // namespace nibble::cuda
