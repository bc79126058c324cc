// CausalLM's private state: the loaded weights of the generic decoder (see arch.h), shared by
// the loader (model_loader.cpp), the forward pass (causal_lm.cpp) and save_pretrained.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/exec_context.h"
#include "models/arch.h"
#include "models/device_plan.h"
#include "models/rope.h"
#include "nibble/generation_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nn/linear.h"
#include "nn/lora.h"
#include "ops/nn_ops.h"

namespace nibble {

struct Norm {
  Tensor w, b;  // b undefined for RMSNorm
  bool defined() const { return w.defined(); }
};

struct NamedLinear {
  std::string name;  // module path, e.g. model.layers.0.self_attn.q_proj
  nn::Linear lin;
  nn::LoraWeights lora;  // an attached LoRA adapter (PeftModel), or none

  // out = lin(x) + the LoRA term when an adapter is attached (inference: no dropout).
  void forward(ExecContext& ctx, const Tensor& x, const Tensor& out) const {
    lin.forward(ctx, x, out);
    if (lora.defined()) nn::lora_add(ctx, lora, x, out);
  }
};

struct DecoderLayer {
  Norm attn_norm, mlp_norm, post_attn_norm, post_mlp_norm, q_norm, k_norm;
  std::vector<NamedLinear> qkv;  // 3 (separate) or 1 (fused)
  NamedLinear o;
  std::vector<NamedLinear> mlp;  // gate, up, down | gate_up, down | up, down
  bool sliding = false;
  Tensor alibi_slopes;  // f32 [Hq] on the layer's device (Bloom), or undefined
};

// One sequence's keys and values, per layer [capacity, Hkv, D] on that layer's device in its
// cache dtype (f32 on the CPU; the compute dtype on CUDA), plus the sequence's own rope state
// (dynamic / longrope tables follow its length). A cache made with a capacity is allocated once
// and never grows; one made without grows by doubling on the host's convenience path.
class KVCache {
 public:
  int64_t length() const { return len_; }
  int64_t capacity() const { return capacity_; }

 private:
  friend struct CausalLM::Impl;
  std::vector<Tensor> k_, v_;  // per layer [capacity, Hkv, D]
  int64_t len_ = 0, capacity_ = 0;
  bool fixed_ = false;
  std::optional<RopeState> rope;
};

// One sequence of a forward call: its rows [row0, row0 + T) of every per-token tensor, and its
// cache, which holds p0 positions before the call.
struct Segment {
  int64_t row0 = 0, T = 0, p0 = 0;
  KVCache* cache = nullptr;
};

// What the blocks of one forward call share: the rows of all sequences stacked ([R, ...]), their
// positions, the rope tables of each row, and the context the ops run on. A split model's step
// carries a view per other device it uses (built once per forward): the same rows with the
// context and the device-side inputs there; a block runs on on(its device).
struct Step {
  ExecContext* ctx = nullptr;
  std::vector<Segment> segs;
  int64_t R = 0;
  std::vector<int64_t> ids, pos;  // [R] on the host
  Tensor ids_dev, pos_dev;        // [R] i64 on the device
  Tensor cos, sin;                // [R, rot_dim / 2] f32 on the device
  int64_t rot_dim = 0;
  std::vector<float> cos_h, sin_h;  // [R, rot_dim / 2] on the host (before the upload)
  // Decode with positions on the device (a replayed CUDA graph, decode_graph.cpp): every
  // segment has T == 1, seq_pos [B] i64 on the device holds each one's p0, and the KV write and
  // attention read it at run time.
  bool device_pos = false;
  Tensor seq_pos;
  // With device_pos and B > 1: i64 [L, 2, B] on the device, each layer's K and V cache
  // addresses of the B sequences, so the KV write and attention of a layer are one launch each.
  Tensor kv_table;
  std::vector<Step> views;  // a split model: this step on each of its other devices

  // This step on device d (itself when its context is there).
  const Step& on(Device d) const;
};

struct DecodeGraphs;  // decode_graph.cpp

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
  std::optional<RopeState> rope;  // the initial rope state each new cache copies
  Tensor alibi_slopes;            // f32 [Hq] on the host, or undefined (each layer has its copy)
  Device device;                  // where the embedding lives and the forward starts
  models::DevicePlan place;       // where each module lives and runs (all `device` unless split)
  HfDeviceMap device_map;         // the map `place` was read from ({"" -> device} unless split)
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

  // Logits [T, V] on the device for ids appended to cache.
  Tensor forward(const std::vector<int64_t>& ids, KVCache& cache, bool last_only = false) const;
  // Sequences of any lengths, one cache each (each at its own position), run as one batch:
  // the per-token work sees all rows, attention runs per sequence. Logits [sum T, V] on the
  // device, or [B, V] of each sequence's last row when last_only (the head runs on those rows
  // alone).
  Tensor forward_batch(const std::vector<std::vector<int64_t>>& batch, std::span<KVCache* const> caches,
                       bool last_only = false) const;
  // A cache for this model; capacity > 0 preallocates that many positions (never grows).
  std::unique_ptr<KVCache> make_cache(int64_t capacity) const;
  void ensure_capacity(KVCache& cache, int64_t needed) const;
  void allocate_cache(KVCache& cache, int64_t capacity) const;  // (re)allocates, keeping what it holds
  // Every module moved to its device of p (the loader's last step).
  void to_devices(const models::DevicePlan& p);
  // The KV cache dtype of a layer on d: f32 on the CPU; on CUDA the compute dtype of 4-bit
  // weights (f32 otherwise).
  DType cache_dtype(Device d) const;

  // ---- the blocks of the forward pass (causal_lm.cpp) ----
  // plan_host: ids, positions and rope rows on the host, caches grown; plan: that plus the upload.
  // kv false: the caches are not grown (a training pass, whose attention runs on its own k and v;
  // the caches then give only the positions and the rope state).
  Step plan_host(const std::vector<std::vector<int64_t>>& batch, std::span<KVCache* const> caches,
                 bool kv = true) const;
  Step plan(const std::vector<std::vector<int64_t>>& batch, std::span<KVCache* const> caches,
            bool kv = true) const;
  Tensor embed_block(const Step& st) const;                            // -> h [R, C]
  void norm_into(const Norm& n, const Tensor& x, const Tensor& out, const Step& st) const;
  void add_norm_into(const Norm& n, const Tensor& h, const Tensor& r, const Tensor& out, const Step& st) const;
  // x [R, C] normed -> o [R, C]; or, with `in` (where qkv_takes_norm / mlp_takes_norm),
  // x = rms_norm(h + r) given as ops::RmsNormInput (inside the decode GEMV on CUDA; in.h_out = h + r)
  Tensor attention_block(const Step& st, size_t li, const Tensor& x,
                         const ops::RmsNormInput* in = nullptr) const;
  Tensor mlp_block(const Step& st, size_t li, const Tensor& x,  // x [R, C] normed -> [R, C]; in as above
                   const ops::RmsNormInput* in = nullptr) const;
  // Whether the layer's norms go into the decode GEMVs as RmsNormInput (CUDA, RMSNorm, few rows).
  bool fused_norms(const Step& st) const;
  bool qkv_takes_norm(const DecoderLayer& L) const;  // the layer's q/k/v / gate-up launches take one
  bool mlp_takes_norm(const DecoderLayer& L) const;
  // h [R, C] in place (or replaced by the fused norms' h + r), up to the residual left in pending
  // (see causal_lm.cpp)
  void decoder_layer(const Step& st, size_t li, Tensor& h, Tensor& pending) const;
  void decoder_layers(const Step& st, Tensor& h) const;  // every layer, h [R, C] in place
  // -> logits [R or B, V] (into out when given)
  Tensor head_block(const Step& st, const Tensor& h, bool last_only, const Tensor& out = Tensor()) const;

  // ---- decode steps as replayed CUDA graphs (decode_graph.cpp) ----
  // True when forward_batch(batch, caches, last_only) may run as a graph: the whole model on one
  // CUDA device, one token per sequence, last rows only, at most 16 sequences,
  // NIBBLE_CUDA_GRAPHS not 0.
  bool graph_eligible(const std::vector<std::vector<int64_t>>& batch, bool last_only) const;
  // The step's logits [B, V] on the device (valid until the next step of the same caches).
  Tensor decode_graphed(const std::vector<std::vector<int64_t>>& batch, std::span<KVCache* const> caches) const;
  mutable std::shared_ptr<DecodeGraphs> graphs;  // captured steps, keyed by batch and cache buffers
  uint64_t graph_launches() const;               // replays so far (tests, benchmarks)
};

}  // namespace nibble
