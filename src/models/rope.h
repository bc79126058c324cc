// Rotary position embeddings exactly as transformers 5.17 computes them: inverse frequencies
// for every rope type (default, linear, dynamic NTK, yarn, longrope, llama3), reproducing its
// float32 tensor arithmetic step by step (Python floats are cast to float32 where torch casts
// them, the remaining arithmetic is done in double as Python does), and the cos/sin tables
// of the rotary module's forward.
//
// Exactness: the only operations that may differ from torch are pow and cos/sin. torch's CPU
// kernels use SLEEF (<= 1 ulp) on full vectors and libm on the tail, CUDA uses its own powf;
// we use libm (std::pow/std::cos on float, correctly rounded in practice). A difference is at
// most an ulp or two of an inverse frequency, far below the logits tolerance.
//
//   RopeTables r = rope_init(cfg);                    // tables at load time
//   rope_cos_sin(r, pos, T, cos, sin);                // cos/sin: [T, r.inv_freq.size()]
//   RopeState st(cfg); st.update(max_pos_id);         // dynamic/longrope switch as transformers
#pragma once

#include <cstdint>
#include <vector>

#include "nibble/model_config.h"

namespace nibble {

struct RopeTables {
  std::vector<float> inv_freq;     // [(rot_dim + 1) / 2]: arange(0, rot_dim, 2)
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn, longrope); float32 as in torch
  int64_t rot_dim = 0;             // leading dims of each head that rotate (ModelConfig::rope_dim)
};

// transformers' rope init for the config (the rotary module's __init__, or for "default" the
// family's compute_default_rope_parameters). seq_len matters for two types only:
//  - dynamic: seq_len > max_position_embeddings gives the table that dynamic_rope_update
//    computes at run time (that path is float32 tensor arithmetic, unlike the init's Python
//    floats); otherwise the init table.
//  - longrope: seq_len > original_max_position_embeddings selects long_factor, else short_factor.
// Throws ConfigError when the config has no rope.
RopeTables rope_init(const ModelConfig& c, int64_t seq_len = 0);

// cos/sin [T, n] with n = r.inv_freq.size(), for positions[T]: freqs = inv_freq * float(pos)
// (one float32 product, as the K=1 matmul gives), cos(freqs) * attention_scaling in float32.
// transformers' emb = cat(freqs, freqs): the row is used for both halves of the rotated dims.
void rope_cos_sin(const RopeTables& r, const int64_t* positions, int64_t T, float* cos, float* sin);

// Follows transformers' dynamic_rope_update across forward calls: "dynamic" recomputes when the
// sequence grows past the largest length seen (and resets to the init table when it drops below
// max_position_embeddings again); "longrope" switches to long_factor past
// original_max_position_embeddings. Other types keep the init table.
class RopeState {
 public:
  explicit RopeState(const ModelConfig& c);
  // The tables for a forward pass whose largest position id is max_position_id.
  const RopeTables& update(int64_t max_position_id);
  const RopeTables& tables() const { return current_; }

 private:
  ModelConfig c_;
  RopeTables original_, current_;
  int64_t max_seq_len_cached_ = 0;
  int64_t original_max_seq_len_ = 0;
};

}  // namespace nibble
