// Random-weight Llama-family checkpoints of real shapes, written at run time for the benchmarks
// (never committed): bf16 weights ~ N(0, 0.02), unit norms, the config.json transformers writes
// for the shape. Header-only so each bench executable includes what it uses.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "nibble/dtype.h"
#include "nibble/safetensors.h"
#include "nibble/tensor.h"
#include "nibble/thread_pool.h"

namespace nibble::bench {

struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// Fills n bf16 values with normal(0, sd) (Box-Muller on 2 x 32 random bits), on all threads.
inline void fill_normal_bf16(uint16_t* out, int64_t n, float sd, uint64_t seed) {
  const int64_t chunk = int64_t(1) << 20;
  parallel_for((n + chunk - 1) / chunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      SplitMix64 rng{seed * 0x100000001b3ull + uint64_t(c)};
      const int64_t b = c * chunk, e = std::min(n, b + chunk);
      for (int64_t i = b; i < e; i += 2) {
        uint64_t r = rng.next();
        float u1 = (float(uint32_t(r >> 40)) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
        float u2 = float(uint32_t(r) >> 8) * (1.0f / 16777216.0f);            // [0, 1)
        float rad = sd * std::sqrt(-2.0f * std::log(u1));
        float th = 6.28318530718f * u2;
        out[i] = f32_to_bf16(rad * std::cos(th));
        if (i + 1 < e) out[i + 1] = f32_to_bf16(rad * std::sin(th));
      }
    }
  });
}

struct LlamaShape {
  const char* name;  // e.g. "llama2_7b"
  int64_t C, F, L, Hq, Hkv, D, V;
  bool tied;
  bool llama3_rope;  // llama-3 rope scaling and theta 500000; else default rope, theta 10000
  int64_t bos, eos;
};

inline const LlamaShape kLlama2_7b{"llama2_7b", 4096, 11008, 32, 32, 32, 128, 32000, false, false, 1, 2};
inline const LlamaShape kLlama31_8b{"llama31_8b", 4096,   14336, 32,   32,     8,
                                    128,          128256, false, true, 128000, 128001};
inline const LlamaShape kLlama32_1b{"llama32_1b", 2048,   8192, 16,   32,     8,
                                    64,           128256, true, true, 128000, 128001};

// Parameters of the shape (embedding and head counted once when tied).
inline int64_t llama_params(const LlamaShape& s) {
  const int64_t layer = s.C * s.D * (s.Hq + 2 * s.Hkv) + s.Hq * s.D * s.C + 3 * s.C * s.F + 2 * s.C;
  return s.V * s.C * (s.tied ? 1 : 2) + s.L * layer + s.C;
}

// Writes config.json + model.safetensors of the shape into dir.
inline void write_llama(const LlamaShape& s, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  nlohmann::json cfg = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"bos_token_id", s.bos},
      {"eos_token_id", s.eos},
      {"head_dim", s.D},
      {"hidden_act", "silu"},
      {"hidden_size", s.C},
      {"initializer_range", 0.02},
      {"intermediate_size", s.F},
      {"max_position_embeddings", s.llama3_rope ? 131072 : 4096},
      {"mlp_bias", false},
      {"num_attention_heads", s.Hq},
      {"num_hidden_layers", s.L},
      {"num_key_value_heads", s.Hkv},
      {"pretraining_tp", 1},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", s.llama3_rope ? 500000.0 : 10000.0},
      {"tie_word_embeddings", s.tied},
      {"torch_dtype", "bfloat16"},
      {"use_cache", true},
      {"vocab_size", s.V},
  };
  if (s.llama3_rope)
    cfg["rope_scaling"] = {{"factor", 32.0},
                           {"high_freq_factor", 4.0},
                           {"low_freq_factor", 1.0},
                           {"original_max_position_embeddings", 8192},
                           {"rope_type", "llama3"}};
  std::ofstream(dir / "config.json") << cfg.dump(2) << "\n";

  std::map<std::string, Tensor> t;
  uint64_t seed = 1;
  auto randn = [&](const std::string& name, const Shape& shape) {
    Tensor x = Tensor::empty(shape, DType::BF16);
    fill_normal_bf16(x.data<uint16_t>(), x.numel(), 0.02f, seed++);
    t[name] = x;
  };
  auto ones = [&](const std::string& name, int64_t n) {
    Tensor x = Tensor::empty({n}, DType::BF16);
    std::fill_n(x.data<uint16_t>(), n, f32_to_bf16(1.0f));
    t[name] = x;
  };
  randn("model.embed_tokens.weight", {s.V, s.C});
  if (!s.tied) randn("lm_head.weight", {s.V, s.C});
  for (int64_t l = 0; l < s.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ones(p + "input_layernorm.weight", s.C);
    ones(p + "post_attention_layernorm.weight", s.C);
    randn(p + "self_attn.q_proj.weight", {s.Hq * s.D, s.C});
    randn(p + "self_attn.k_proj.weight", {s.Hkv * s.D, s.C});
    randn(p + "self_attn.v_proj.weight", {s.Hkv * s.D, s.C});
    randn(p + "self_attn.o_proj.weight", {s.C, s.Hq * s.D});
    randn(p + "mlp.gate_proj.weight", {s.F, s.C});
    randn(p + "mlp.up_proj.weight", {s.F, s.C});
    randn(p + "mlp.down_proj.weight", {s.C, s.F});
  }
  ones("model.norm.weight", s.C);
  save_safetensors(dir / "model.safetensors", t);
}

}  // namespace nibble::bench
