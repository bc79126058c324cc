// The table of supported architectures (see arch.h). Names follow transformers 5's modules.
#include <map>

#include "models/arch.h"
#include "nibble/error.h"

namespace nibble::models {

namespace {

ArchSpec llama_like(const std::string& arch, const std::string& norm_class) {
  ArchSpec s;
  s.architecture = arch;
  s.prefix = "model.";
  s.embed = "embed_tokens";
  s.layers = "layers";
  s.final_norm = "norm";
  s.lm_head = "lm_head";
  s.norm = NormKind::RMS;
  s.norm_class = norm_class;
  s.attn_norm = "input_layernorm";
  s.mlp_norm = "post_attention_layernorm";
  s.attn = "self_attn";
  s.qkv_names = {"q_proj", "k_proj", "v_proj"};
  s.o_proj = "o_proj";
  s.mlp = "mlp";
  s.mlp_names = {"gate_proj", "up_proj", "down_proj"};
  s.default_act = "silu";
  s.layer_class = arch.substr(0, arch.find("ForCausalLM")) + "DecoderLayer";
  s.base_children = {"embed_tokens", "layers", "norm", "rotary_emb"};
  return s;
}

std::map<std::string, ArchSpec> build() {
  std::map<std::string, ArchSpec> m;
  m["LlamaForCausalLM"] = llama_like("LlamaForCausalLM", "LlamaRMSNorm");
  m["MistralForCausalLM"] = llama_like("MistralForCausalLM", "MistralRMSNorm");
  m["Qwen2ForCausalLM"] = llama_like("Qwen2ForCausalLM", "Qwen2RMSNorm");
  {
    ArchSpec s = llama_like("Qwen3ForCausalLM", "Qwen3RMSNorm");
    s.q_norm = "q_norm";
    s.k_norm = "k_norm";
    m[s.architecture] = s;
  }
  {
    ArchSpec s = llama_like("Gemma2ForCausalLM", "Gemma2RMSNorm");
    s.mlp_norm = "pre_feedforward_layernorm";
    s.post_attn_norm = "post_attention_layernorm";
    s.post_mlp_norm = "post_feedforward_layernorm";
    s.scale_embeddings = true;
    s.embed_class = "Gemma2TextScaledWordEmbedding";
    s.norm_unit_offset = true;
    s.default_act = "gelu_pytorch_tanh";
    m[s.architecture] = s;
  }
  {
    ArchSpec s = llama_like("Phi3ForCausalLM", "Phi3RMSNorm");
    s.qkv = QkvKind::Concat;
    s.qkv_names = {"qkv_proj"};
    s.mlp_kind = MlpKind::GatedFused;
    s.mlp_names = {"gate_up_proj", "down_proj"};
    m[s.architecture] = s;
  }
  {
    ArchSpec s;
    s.architecture = "GPT2LMHeadModel";
    s.layer_class = "GPT2Block";
    s.base_children = {"wte", "wpe", "drop", "h", "ln_f"};
    s.prefix = "transformer.";
    s.embed = "wte";
    s.pos_embed = "wpe";
    s.layers = "h";
    s.final_norm = "ln_f";
    s.lm_head = "lm_head";
    s.norm = NormKind::Layer;
    s.norm_class = "LayerNorm";
    s.attn_norm = "ln_1";
    s.mlp_norm = "ln_2";
    s.attn = "attn";
    s.qkv = QkvKind::Concat;
    s.qkv_names = {"c_attn"};
    s.o_proj = "c_proj";
    s.mlp = "mlp";
    s.mlp_kind = MlpKind::Plain;
    s.mlp_names = {"c_fc", "c_proj"};
    s.pos = PosKind::Learned;
    s.conv1d = true;
    s.default_act = "gelu_new";
    m[s.architecture] = s;
  }
  {
    ArchSpec s;
    s.architecture = "GPTNeoXForCausalLM";
    s.layer_class = "GPTNeoXLayer";
    s.base_children = {"embed_in", "emb_dropout", "layers", "final_layer_norm", "rotary_emb"};
    s.prefix = "gpt_neox.";
    s.embed = "embed_in";
    s.layers = "layers";
    s.final_norm = "final_layer_norm";
    s.lm_head_tensor = "embed_out";  // transformers 5 names the module lm_head, files keep embed_out
    s.norm = NormKind::Layer;
    s.norm_class = "LayerNorm";
    s.attn_norm = "input_layernorm";
    s.mlp_norm = "post_attention_layernorm";
    s.attn = "attention";
    s.qkv = QkvKind::PerHead;
    s.qkv_names = {"query_key_value"};
    s.o_proj = "dense";
    s.mlp = "mlp";
    s.mlp_kind = MlpKind::Plain;
    s.mlp_names = {"dense_h_to_4h", "dense_4h_to_h"};
    s.parallel_residual = true;  // the config's use_parallel_residual decides
    s.default_act = "gelu";
    m[s.architecture] = s;
  }
  {
    ArchSpec s;
    s.architecture = "OPTForCausalLM";
    s.layer_class = "OPTDecoderLayer";
    s.base_children = {"embed_tokens", "embed_positions", "final_layer_norm", "layers"};
    s.prefix = "model.decoder.";
    s.embed = "embed_tokens";
    s.pos_embed = "embed_positions";
    s.pos_offset = 2;
    s.layers = "layers";
    s.final_norm = "final_layer_norm";
    s.lm_head = "lm_head";
    s.norm = NormKind::Layer;
    s.norm_class = "LayerNorm";
    s.attn_norm = "self_attn_layer_norm";
    s.mlp_norm = "final_layer_norm";
    s.attn = "self_attn";
    s.qkv_names = {"q_proj", "k_proj", "v_proj"};
    s.o_proj = "out_proj";
    s.mlp = "";
    s.mlp_kind = MlpKind::Plain;
    s.mlp_names = {"fc1", "fc2"};
    s.pos = PosKind::Learned;
    s.default_act = "relu";
    m[s.architecture] = s;
  }
  {
    ArchSpec s;
    s.architecture = "BloomForCausalLM";
    s.layer_class = "BloomBlock";
    s.base_children = {"word_embeddings", "word_embeddings_layernorm", "h", "ln_f"};
    s.prefix = "transformer.";
    s.embed = "word_embeddings";
    s.embed_norm = "word_embeddings_layernorm";
    s.layers = "h";
    s.final_norm = "ln_f";
    s.lm_head = "lm_head";
    s.norm = NormKind::Layer;
    s.norm_class = "LayerNorm";
    s.attn_norm = "input_layernorm";
    s.mlp_norm = "post_attention_layernorm";
    s.attn = "self_attention";
    s.qkv = QkvKind::PerHead;
    s.qkv_names = {"query_key_value"};
    s.o_proj = "dense";
    s.mlp = "mlp";
    s.mlp_kind = MlpKind::Plain;
    s.mlp_names = {"dense_h_to_4h", "dense_4h_to_h"};
    s.pos = PosKind::Alibi;
    s.default_act = "bloom_gelu";
    m[s.architecture] = s;
  }
  return m;
}

const std::map<std::string, ArchSpec>& table() {
  static const std::map<std::string, ArchSpec> t = build();
  return t;
}

}  // namespace

std::vector<std::string> supported_architectures() {
  std::vector<std::string> v;
  for (const auto& [k, s] : table()) v.push_back(k);
  return v;
}

const ArchSpec& arch_spec(const std::string& architecture) {
  auto it = table().find(architecture);
  if (it != table().end()) return it->second;
  std::string list;
  for (const auto& k : supported_architectures()) list += (list.empty() ? "" : ", ") + k;
  throw ConfigError(detail::str("unsupported architecture '", architecture, "' (supported: ", list, ")"));
}

namespace {
bool matches_module(const std::string& module, const std::string& key) {
  return module == key || module.find(key + ".") != std::string::npos;
}
}  // namespace

std::string unquantized_reason(const ArchSpec& spec, const BitsAndBytesConfig& qc, const std::string& module,
                               bool tied_head) {
  for (const auto& k : spec.keep_in_fp32)
    if (matches_module(module, k)) return "keep-in-fp32";
  if (qc.llm_int8_skip_modules) {
    for (const auto& k : *qc.llm_int8_skip_modules)
      if (matches_module(module, k)) return "user list";
    return "";
  }
  if (matches_module(module, spec.lm_head)) return tied_head ? "output head, tied" : "output head";
  return "";
}

}  // namespace nibble::models
