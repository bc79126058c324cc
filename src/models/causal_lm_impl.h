// CausalLM's private state: the loaded weights of the generic decoder (see arch.h), shared by
// the loader (model_loader.cpp), the forward pass (causal_lm.cpp) and save_pretrained.
#pragma once

#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "models/arch.h"
#include "models/rope.h"
#include "nibble/generation_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nn/linear.h"
#include "ops/nn_ops.h"

namespace nibble {

struct Norm {
  Tensor w, b;  // b undefined for RMSNorm
  bool defined() const { return w.defined(); }
};

struct NamedLinear {
  std::string name;  // module path, e.g. model.layers.0.self_attn.q_proj
  nn::Linear lin;
};

struct DecoderLayer {
  Norm attn_norm, mlp_norm, post_attn_norm, post_mlp_norm, q_norm, k_norm;
  std::vector<NamedLinear> qkv;  // 3 (separate) or 1 (fused)
  NamedLinear o;
  std::vector<NamedLinear> mlp;  // gate, up, down | gate_up, down | up, down
  bool sliding = false;
};

class KVCache {
 public:
  int64_t length() const { return len_; }

 private:
  friend struct CausalLM::Impl;
  std::vector<Tensor> k_, v_;  // per layer [capacity, Hkv, D] f32
  int64_t len_ = 0, capacity_ = 0;
};

struct CausalLM::Impl {
  ModelConfig config;
  const models::ArchSpec* spec = nullptr;
  std::optional<BitsAndBytesConfig> qc;
  std::optional<Checkpoint> checkpoint;  // keeps the mmap'd views alive
  std::filesystem::path source_dir;      // the folder it was loaded from
  bool prequantized = false;             // quantization state read from the files (not made on load)

  Tensor embed, pos_embed;  // as stored
  Norm embed_norm, final_norm;
  NamedLinear lm_head;
  bool tied_head = false;
  std::vector<DecoderLayer> layers;

  GenerationConfig generation;
  mutable std::optional<RopeState> rope;  // tables follow the sequence length (dynamic rope)
  std::vector<float> alibi_slopes;  // [Hq]
  ops::Activation act = ops::Activation::SiLU;
  float attn_scale = 1.0f;
  std::optional<float> attn_softcap, final_softcap;
  bool parallel_residual = false;
  int64_t head_dim = 0, n_heads = 0, n_kv_heads = 0;

  // Every Linear in module order, the output head last.
  std::vector<const NamedLinear*> linears() const {
    std::vector<const NamedLinear*> out;
    for (const auto& L : layers) {
      for (const auto& l : L.qkv) out.push_back(&l);
      out.push_back(&L.o);
      for (const auto& l : L.mlp) out.push_back(&l);
    }
    out.push_back(&lm_head);
    return out;
  }

  Tensor forward(const std::vector<int64_t>& ids, KVCache& cache) const;
  // Equal-length sequences, one cache each (all holding the same length): logits [B * T, V].
  Tensor forward_batch(const std::vector<std::vector<int64_t>>& batch,
                       std::span<KVCache* const> caches) const;
  void ensure_capacity(KVCache& cache, int64_t needed) const;
};

}  // namespace nibble
