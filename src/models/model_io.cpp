// What a loaded CausalLM reports and writes: its module list (names and transformers' class
// names), get_memory_footprint, and save_pretrained in the layout transformers + bitsandbytes
// write (config.json with the full quantization_config, generation_config.json, weights with
// bitsandbytes' serialized quant state), every file written atomically.
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/atomic_dir.h"
#include "models/causal_lm_impl.h"
#include "nibble/error.h"

namespace nibble {

using detail::str;

std::vector<ModuleInfo> CausalLM::modules() const {
  const Impl& m = *impl_;
  const models::ArchSpec& s = *m.spec;
  std::vector<ModuleInfo> out;
  const std::string P = s.prefix;
  out.push_back({P + s.embed, s.embed_class});
  if (m.pos_embed.defined())
    out.push_back({P + s.pos_embed, s.pos_offset ? "OPTLearnedPositionalEmbedding" : "Embedding"});
  if (m.embed_norm.defined()) out.push_back({P + s.embed_norm, s.norm_class});
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const DecoderLayer& L = m.layers[i];
    std::string lp = P + s.layers + "." + std::to_string(i) + ".";
    out.push_back({lp + s.attn_norm, s.norm_class});
    for (const auto& l : L.qkv) out.push_back({l.name, l.lin.class_name()});
    out.push_back({L.o.name, L.o.lin.class_name()});
    if (L.q_norm.defined()) {
      out.push_back({lp + s.attn + "." + s.q_norm, s.norm_class});
      out.push_back({lp + s.attn + "." + s.k_norm, s.norm_class});
    }
    if (L.post_attn_norm.defined()) out.push_back({lp + s.post_attn_norm, s.norm_class});
    out.push_back({lp + s.mlp_norm, s.norm_class});
    for (const auto& l : L.mlp) out.push_back({l.name, l.lin.class_name()});
    if (L.post_mlp_norm.defined()) out.push_back({lp + s.post_mlp_norm, s.norm_class});
  }
  out.push_back({P + s.final_norm, s.norm_class});
  out.push_back({m.lm_head.name, m.lm_head.lin.class_name()});
  return out;
}

int64_t CausalLM::get_memory_footprint() const {
  const Impl& m = *impl_;
  auto bytes = [](const Tensor& t) { return t.defined() ? int64_t(t.nbytes()) : 0; };
  auto norm_bytes = [&](const Norm& n) { return bytes(n.w) + bytes(n.b); };
  int64_t b = bytes(m.embed) + bytes(m.pos_embed) + norm_bytes(m.embed_norm) + norm_bytes(m.final_norm);
  for (const auto& L : m.layers) {
    for (const Norm* n :
         {&L.attn_norm, &L.mlp_norm, &L.post_attn_norm, &L.post_mlp_norm, &L.q_norm, &L.k_norm})
      b += norm_bytes(*n);
    for (const auto& l : L.qkv) b += l.lin.footprint_bytes();
    b += L.o.lin.footprint_bytes();
    for (const auto& l : L.mlp) b += l.lin.footprint_bytes();
  }
  if (!m.tied_head) b += m.lm_head.lin.footprint_bytes();
  // buffers: the rotary embedding keeps inv_freq and original_inv_freq (f32, rot_dim / 2 each)
  if (m.spec->pos == models::PosKind::Rope) b += 2 * ((m.config.rope_dim() + 1) / 2) * 4;
  if (m.spec->scale_embeddings) b += 4;  // the scaled embedding's embed_scale (an f32 scalar)
  return b;
}

namespace {

// conv1d: GPT-2 keeps unquantized projections as Conv1D, stored [in, out]; quantized ones
// became bitsandbytes Linear layers and are stored as such.
void put_linear(std::map<std::string, Tensor>& sd, const NamedLinear& nl, bool conv1d = false) {
  const nn::Linear& l = nl.lin;
  if (l.bias().defined()) sd[nl.name + ".bias"] = l.bias();
  std::map<std::string, Tensor> entries;
  l.traits().state_dict(l, entries);
  for (auto& [k, v] : entries) sd[nl.name + "." + k] = v;
  if (conv1d && !l.traits().quantized)  // transposed on the host (a device tensor's strided copy is not an op)
    sd[nl.name + ".weight"] = l.weight().to(Device::cpu()).transpose(0, 1).contiguous();
}

void put_norm(std::map<std::string, Tensor>& sd, const std::string& name, const Norm& n) {
  if (!n.defined()) return;
  sd[name + ".weight"] = n.w;
  if (n.b.defined()) sd[name + ".bias"] = n.b;
}

void write_json(const std::filesystem::path& p, const nlohmann::ordered_json& j) {
  std::string text = j.dump(2) + "\n";
  write_file_atomic(p, text.data(), text.size());
}

}  // namespace

namespace {

// Greedy sharding in name order, as transformers splits a state dict: a new shard starts when
// the next tensor would push the current one past the limit (a lone oversized tensor gets its
// own shard).
void save_weights(const std::filesystem::path& dir, const std::map<std::string, Tensor>& sd,
                  int64_t max_shard) {
  int64_t total = 0;
  for (const auto& [k, v] : sd) total += int64_t(v.nbytes());
  if (total <= max_shard) {
    save_safetensors(dir / "model.safetensors", sd);
    return;
  }
  std::vector<std::map<std::string, Tensor>> shards(1);
  int64_t cur = 0;
  for (const auto& [k, v] : sd) {
    int64_t b = int64_t(v.nbytes());
    if (cur > 0 && cur + b > max_shard) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back()[k] = v;
    cur += b;
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    save_safetensors(dir / name, shards[i]);
    for (const auto& [k, v] : shards[i]) weight_map[k] = name;
  }
  nlohmann::ordered_json index{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  std::string text = index.dump(2) + "\n";
  write_file_atomic(dir / "model.safetensors.index.json", text.data(), text.size());
}

}  // namespace

void CausalLM::save_pretrained(const std::filesystem::path& dir, int64_t max_shard_size) const {
  const Impl& m = *impl_;
  const models::ArchSpec& s = *m.spec;
  std::map<std::string, Tensor> sd;
  const std::string P = s.prefix;
  sd[P + s.embed + ".weight"] = m.embed;
  if (m.pos_embed.defined()) sd[P + s.pos_embed + ".weight"] = m.pos_embed;
  put_norm(sd, P + s.embed_norm, m.embed_norm);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const DecoderLayer& L = m.layers[i];
    std::string lp = P + s.layers + "." + std::to_string(i) + ".";
    put_norm(sd, lp + s.attn_norm, L.attn_norm);
    put_norm(sd, lp + s.mlp_norm, L.mlp_norm);
    put_norm(sd, lp + s.post_attn_norm, L.post_attn_norm);
    put_norm(sd, lp + s.post_mlp_norm, L.post_mlp_norm);
    put_norm(sd, lp + s.attn + "." + s.q_norm, L.q_norm);
    put_norm(sd, lp + s.attn + "." + s.k_norm, L.k_norm);
    for (const auto& l : L.qkv) put_linear(sd, l, s.conv1d);
    put_linear(sd, L.o, s.conv1d);
    for (const auto& l : L.mlp) put_linear(sd, l, s.conv1d);
  }
  put_norm(sd, P + s.final_norm, m.final_norm);
  if (!m.tied_head) {
    NamedLinear head = m.lm_head;
    if (!s.lm_head_tensor.empty()) head.name = s.lm_head_tensor;
    put_linear(sd, head);
  }
  // The folder is replaced as a whole (io::AtomicDir): a crash leaves the old model or the new
  // one, never new weights beside an old config. Other files there (tokenizer, README) stay;
  // old weight files (a shard count that changed) go, as transformers removes them.
  io::AtomicDir out(dir, [](const std::string& n) {
    return n == "config.json" || n == "generation_config.json" ||
           (n.starts_with("model") &&
            (n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json")));
  });
  save_weights(out.path(), sd, max_shard_size);
  nlohmann::ordered_json config = m.config.raw;
  if (m.qc) config["quantization_config"] = nlohmann::ordered_json(m.qc->to_dict());
  write_json(out.path() / "config.json", config);
  nlohmann::ordered_json gen = m.generation.raw.is_null() ? nlohmann::ordered_json::object()
                                                          : nlohmann::ordered_json(m.generation.raw);
  write_json(out.path() / "generation_config.json", gen);
  out.commit();
}

}  // namespace nibble
