// Architectures as data: one ArchSpec per Hugging Face `architectures` name, giving tensor
// names and the few structural switches in which decoder-only LMs differ (norm kind, fused
// or separate q/k/v, gated or plain MLP, rope/learned/alibi positions, parallel residual,
// sandwich norms, Conv1D storage). The generic decoder in causal_lm.cpp reads only this.
#pragma once

#include <string>
#include <vector>

#include "nibble/bnb_config.h"

namespace nibble::models {

enum class NormKind { RMS, Layer };
enum class QkvKind {
  Separate,      // q_proj, k_proj, v_proj
  Concat,        // one projection, output [q | k | v]            (Phi-3 qkv_proj, GPT-2 c_attn)
  PerHead,       // one projection, output per head [q_h k_h v_h] (GPT-NeoX, Bloom)
};
enum class MlpKind {
  Gated,       // down(act(gate(x)) * up(x))
  GatedFused,  // gate_up_proj -> [gate | up]                    (Phi-3)
  Plain,       // down(act(up(x)))
};
enum class PosKind { Rope, Learned, Alibi };

struct ArchSpec {
  std::string architecture;  // "LlamaForCausalLM"
  std::string prefix;        // "model." — the base model's module path
  std::string embed;         // "embed_tokens"
  std::string embed_class = "Embedding";  // Gemma-2: Gemma2TextScaledWordEmbedding (+ an f32 scale buffer)
  std::string pos_embed;     // learned positions ("wpe", "embed_positions") or ""
  int pos_offset = 0;        // OPT stores positions shifted by 2
  std::string embed_norm;    // Bloom: "word_embeddings_layernorm"
  std::string layers;        // "layers" or "h"
  std::string final_norm;    // "norm", "ln_f", "final_layer_norm"
  std::string lm_head = "lm_head";  // the output head's module name
  std::string lm_head_tensor;       // its tensor prefix in files when it differs (GPT-NeoX: "embed_out")
  NormKind norm = NormKind::RMS;
  std::string norm_class;    // transformers' class name: "LlamaRMSNorm", "LayerNorm", ...
  // per layer, relative to "<prefix><layers>.<i>."
  std::string attn_norm, mlp_norm;            // input_layernorm / post_attention_layernorm, ln_1 / ln_2
  std::string post_attn_norm, post_mlp_norm;  // Gemma-2 sandwich norms ("" when absent)
  std::string attn;                           // "self_attn", "attn", "attention", "self_attention"
  QkvKind qkv = QkvKind::Separate;
  std::vector<std::string> qkv_names;         // 3 names (Separate) or 1 (fused)
  std::string o_proj;                         // "o_proj", "c_proj", "dense", "out_proj"
  std::string q_norm, k_norm;                 // Qwen-3 per-head RMSNorm ("" when absent)
  std::string mlp;                            // "mlp" or "" (OPT puts fc1/fc2 in the layer)
  MlpKind mlp_kind = MlpKind::Gated;
  std::vector<std::string> mlp_names;         // gate, up, down | gate_up, down | up, down
  PosKind pos = PosKind::Rope;
  bool parallel_residual = false;             // GPT-NeoX
  bool conv1d = false;                        // GPT-2: Linear weights stored [in, out]
  bool scale_embeddings = false;              // Gemma: embeddings * sqrt(hidden)
  bool norm_unit_offset = false;              // Gemma: RMSNorm weight applied as (1 + w)
  std::string default_act;                    // when config has no hidden_act
  std::vector<std::string> keep_in_fp32;      // transformers' _keep_in_fp32_modules
  // Device placement (device_map.cpp): the decoder layer's class (the model's _no_split_modules)
  // and the base model's children in transformers' order (parameterless ones included: they
  // appear in an hf_device_map too).
  std::string layer_class;                    // "LlamaDecoderLayer"
  std::vector<std::string> base_children;     // {"embed_tokens", "layers", "norm", "rotary_emb"}
};

// Why transformers leaves Linear `module` unquantized under qc ("" when it quantizes it):
// "keep-in-fp32", "user list" (llm_int8_skip_modules, which replaces the default), or
// "output head" / "output head, tied". A module matches a key when its name equals it or
// contains key + "." (FORMATS.md §4). The loader and the verification both ask this.
std::string unquantized_reason(const ArchSpec& spec, const BitsAndBytesConfig& qc, const std::string& module,
                               bool tied_head);

// The spec for an `architectures` name; ConfigError listing the supported ones otherwise.
const ArchSpec& arch_spec(const std::string& architecture);
std::vector<std::string> supported_architectures();

}  // namespace nibble::models
