// The logit of one (query row, key) pair as the attention kernels and their backward compute it:
// s = scale * q.k, soft-capped (cap * tanh(s / cap)), plus ALiBi's slope * key position, and
// d(logit) / d(q.k) for the backward.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nibble::cuda::dev {

struct Logit {
  float s;   // after scale, softcap and ALiBi
  float dl;  // d(logit) / d(q.k)
};

// softcap <= 0: none; alibi false: no slope term.
__device__ __forceinline__ Logit attn_logit(float qk, float scale, float softcap, bool alibi, float slope,
                                            int64_t j) {
  Logit r{qk * scale, scale};
  if (softcap > 0.0f) {
    const float t = tanhf(r.s / softcap);
    r.s = t * softcap;
    r.dl *= 1.0f - t * t;
  }
  if (alibi) r.s += slope * float(j);
  return r;
}

}  // namespace nibble::cuda::dev
