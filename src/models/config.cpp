// config.json -> ModelConfig. The main idea: one row per family holds what differs as data
// (key spellings, transformers' class defaults); the few real differences in logic (qwen2's
// sliding layout, gemma2's alternation, phi3's and gpt_neox's rope quirks) are spelled out
// where they happen. Rope settings are standardized as transformers 5.17 does it
// (RotaryEmbeddingConfigMixin.convert_rope_params_to_dict + standardize_rope_params).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>

#include "models/json_fields.h"
#include "nibble/error.h"
#include "nibble/model_config.h"

namespace nibble {

using json = nlohmann::json;
using models::JsonFields;

namespace {

// transformers' defaults per config class (configuration_<family>.py), for fields config.json
// may leave out. Key names: nullptr = the family has no such key (a fixed value is used).
struct Family {
  const char* model_type;
  const char* hidden_key;   // alias tried after "hidden_size" (gpt2: n_embd)
  const char* layers_key;   // alias tried after "num_hidden_layers"
  const char* heads_key;    // alias tried after "num_attention_heads"
  const char* max_pos_key;  // where max_position_embeddings lives
  int64_t max_pos;          // its default (0: none)
  const char* eps_key;
  double eps;
  const char* act_key;
  const char* act;
  bool tie;
  int64_t kv_heads;  // default num_key_value_heads; 0: = num_attention_heads
  int64_t head_dim;  // default head_dim; 0: hidden_size / num_attention_heads
  std::optional<int64_t> bos, eos, pad;
  std::optional<int64_t> sliding_window;  // default window (mistral, qwen, gemma2)
  bool has_rope;
  bool default_rope_partial;  // the family's default rope honours partial_rotary_factor
  bool checks_divisible;      // its validate_architecture() rejects hidden % heads != 0
};

constexpr auto none = std::nullopt;
// clang-format off
const Family kFamilies[] = {
    // model_type  hidden   layers    heads     max_pos_key                max_pos  eps_key               eps   act_key                act                  tie    kv  hd   bos    eos    pad    sliding rope  partial div
    {"llama",    nullptr, nullptr,  nullptr,  "max_position_embeddings", 2048,    "rms_norm_eps",       1e-6, "hidden_act",          "silu",              false, 0,  0,   1,     2,     none,  none,   true, false, true},
    {"mistral",  nullptr, nullptr,  nullptr,  "max_position_embeddings", 131072,  "rms_norm_eps",       1e-6, "hidden_act",          "silu",              false, 8,  0,   1,     2,     none,  4096,   true, false, false},
    {"qwen2",    nullptr, nullptr,  nullptr,  "max_position_embeddings", 32768,   "rms_norm_eps",       1e-6, "hidden_act",          "silu",              false, 32, 0,   none,  none,  none,  4096,   true, false, false},
    {"qwen3",    nullptr, nullptr,  nullptr,  "max_position_embeddings", 32768,   "rms_norm_eps",       1e-6, "hidden_act",          "silu",              false, 32, 128, none,  none,  none,  4096,   true, false, false},
    {"gemma2",   nullptr, nullptr,  nullptr,  "max_position_embeddings", 8192,    "rms_norm_eps",       1e-6, "hidden_activation",   "gelu_pytorch_tanh", true,  4,  256, 2,     1,     0,     4096,   true, false, true},
    {"phi3",     nullptr, nullptr,  nullptr,  "max_position_embeddings", 4096,    "rms_norm_eps",       1e-5, "hidden_act",          "silu",              false, 0,  0,   1,     32000, 32000, none,   true, true,  false},
    {"gpt_neox", nullptr, nullptr,  nullptr,  "max_position_embeddings", 2048,    "layer_norm_eps",     1e-5, "hidden_act",          "gelu",              false, 0,  0,   0,     2,     none,  none,   true, true,  true},
    {"gpt2",     "n_embd", "n_layer", "n_head", "n_positions",           1024,    "layer_norm_epsilon", 1e-5, "activation_function", "gelu_new",          true,  0,  0,   50256, 50256, none,  none,   false, false, false},
    {"opt",      nullptr, nullptr,  nullptr,  "max_position_embeddings", 2048,    nullptr,              1e-5, "activation_function", "relu",              true,  0,  0,   2,     2,     1,     none,   false, false, false},
    {"bloom",    "n_embed", "n_layer", "n_head", nullptr,                0,       "layer_norm_epsilon", 1e-5, nullptr,               "bloom_gelu",        true,  0,  0,   1,     2,     none,  none,   false, false, false},
    // any other model_type: llama's names and defaults, hidden % heads checked only to derive head_dim
    {"",         nullptr, nullptr,  nullptr,  "max_position_embeddings", 2048,    "rms_norm_eps",       1e-6, "hidden_act",          "silu",              false, 0,  0,   1,     2,     none,  none,   true, false, false},
};
// clang-format on

const Family& family_of(const std::string& model_type) {
  for (const auto& f : kFamilies)
    if (model_type == f.model_type) return f;
  return kFamilies[std::size(kFamilies) - 1];
}

bool is_mha_family(const std::string& t) {
  return t == "gpt2" || t == "gpt_neox" || t == "opt" || t == "bloom";
}

// A required positive shape field. `field` is the class's own name for it (reported when
// missing); `override` a second spelling that wins when present, because transformers sets it
// after the field: through attribute_map (gpt2's hidden_size over n_embd, bloom's
// num_hidden_layers over n_layer) or as a popped kwarg (bloom's n_embed over hidden_size).
struct Shape {
  int64_t value;
  std::string key;  // the key it was read from
};
// A size from config.json: positive and at most `max` (2^31 - 1 by default, so products of a
// few sizes stay far inside int64; a file that claims more is refused, not allocated for).
Shape shape_field(const JsonFields& f, const char* field, const char* override_key = nullptr,
                  int64_t max = (int64_t(1) << 31) - 1) {
  std::string key = override_key && f.has(override_key) ? override_key : field;
  int64_t v = f.req_int(key);
  if (v <= 0) f.fail(key, "must be positive, got " + std::to_string(v));
  if (v > max) f.fail(key, "must be at most " + std::to_string(max) + ", got " + std::to_string(v));
  return {v, key};
}

// Decoder layers a config may claim (per-layer lists are built from this count).
constexpr int64_t kMaxLayers = 65536;

// ---- rope ---------------------------------------------------------------------------------

const char* const kRopeTypes[] = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"};

std::optional<RopeParameters> parse_rope(const JsonFields& f, const ModelConfig& c) {
  // transformers: rope_parameters = rope_scaling or rope_parameters (an empty dict is falsy).
  const char* src = nullptr;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!f.has(key)) continue;
    const json& v = f.json().at(key);
    if (!v.is_object()) f.fail(key, "expected an object, got " + JsonFields::type_of(v));
    if (!v.empty()) {
      src = key;
      break;
    }
  }
  static const json kEmpty = json::object();
  JsonFields d(src ? f.json().at(src) : kEmpty, f.origin(), std::string(src ? src : "rope_parameters") + ".");
  for (const char* lt : {"full_attention", "sliding_attention"})
    if (d.has(lt)) d.fail(lt, "per-layer-type rope parameters are not supported");

  RopeParameters r;
  const bool is_neox = c.model_type == "gpt_neox", is_phi3 = c.model_type == "phi3";
  // rope_theta: the dict's, else the top-level key (gpt_neox: rotary_emb_base), else 10000.
  if (auto t = d.opt_num("rope_theta"))
    r.rope_theta = *t;
  else
    r.rope_theta = f.num_or(is_neox ? "rotary_emb_base" : "rope_theta", 10000.0);
  // partial_rotary_factor: the dict's, else top level (gpt_neox: rotary_pct, default 0.25).
  if (auto p = d.opt_num("partial_rotary_factor"))
    r.partial_rotary_factor = *p;
  else if (is_neox)
    r.partial_rotary_factor = f.num_or("rotary_pct", 0.25);
  else
    r.partial_rotary_factor = f.num_or("partial_rotary_factor", 1.0);

  r.rope_type = d.str_or("rope_type", d.str_or("type", "default"));
  // Phi3Config renames the Phi-3 spellings of LongRoPE.
  if (is_phi3 && (r.rope_type == "su" || r.rope_type == "yarn")) r.rope_type = "longrope";
  if (std::none_of(std::begin(kRopeTypes), std::end(kRopeTypes),
                   [&](const char* t) { return r.rope_type == t; }))
    d.fail(d.has("rope_type") ? "rope_type" : "type",
           "'" + r.rope_type + "' is not supported (default, linear, dynamic, yarn, longrope, llama3)");

  r.factor = d.opt_num("factor");
  r.attention_factor = d.opt_num("attention_factor");
  r.low_freq_factor = d.opt_num("low_freq_factor");
  r.high_freq_factor = d.opt_num("high_freq_factor");
  r.beta_fast = d.opt_num("beta_fast");
  r.beta_slow = d.opt_num("beta_slow");
  r.mscale = d.opt_num("mscale");
  r.mscale_all_dim = d.opt_num("mscale_all_dim");
  r.truncate = d.opt_bool("truncate");
  r.short_factor = d.num_list("short_factor");
  r.long_factor = d.num_list("long_factor");
  r.original_max_position_embeddings = d.opt_int("original_max_position_embeddings");

  const bool scaled = r.rope_type == "llama3" || r.rope_type == "yarn" || r.rope_type == "longrope";
  if (scaled) {
    // A top-level original_max_position_embeddings (Phi3Config has it as a field, default
    // 4096; for other classes it is an extra attribute that the rope init's second
    // standardization sees) overrides the dict's; else the dict's, else max_position_embeddings.
    if (is_phi3)
      r.original_max_position_embeddings = f.int_or("original_max_position_embeddings", 4096);
    else if (auto o = f.opt_int("original_max_position_embeddings"))
      r.original_max_position_embeddings = o;
    else if (!r.original_max_position_embeddings)
      r.original_max_position_embeddings = c.max_position_embeddings;
    if (*r.original_max_position_embeddings <= 0)
      d.fail("original_max_position_embeddings", "must be positive");
  }

  // What transformers' _validate_<type>_rope_parameters (KeyError) and the init functions
  // (a None in arithmetic) reject.
  if (!(r.rope_theta > 0)) d.fail("rope_theta", "must be positive");
  if (!(r.partial_rotary_factor > 0 && r.partial_rotary_factor <= 1))
    d.fail("partial_rotary_factor", "must be in (0, 1]");
  const std::string& t = r.rope_type;
  if ((t == "linear" || t == "dynamic" || t == "llama3") && !r.factor)
    d.fail("factor", "missing (required for " + t + ")");
  if (t == "yarn" && !d.json().contains("factor")) d.fail("factor", "missing (required for yarn)");
  if (r.factor && !(*r.factor > 0)) d.fail("factor", "must be positive");
  if (t == "llama3") {
    if (!r.low_freq_factor) d.fail("low_freq_factor", "missing (required for llama3)");
    if (!r.high_freq_factor) d.fail("high_freq_factor", "missing (required for llama3)");
    if (*r.high_freq_factor == *r.low_freq_factor)
      d.fail("high_freq_factor", "must differ from low_freq_factor");
  }
  if (t == "longrope") {
    if (!d.has("short_factor")) d.fail("short_factor", "missing (required for longrope)");
    if (!d.has("long_factor")) d.fail("long_factor", "missing (required for longrope)");
  }
  return r;
}

}  // namespace

int64_t ModelConfig::rope_dim() const {
  if (!rope) return 0;
  // llama, mistral, qwen2/3 and gemma2 ignore partial_rotary_factor in their default rope;
  // every scaled rope type and phi3/gpt_neox's default apply it: int(head_dim * factor).
  if (rope->rope_type == "default" && !family_of(model_type).default_rope_partial) return head_dim;
  return int64_t(double(head_dim) * rope->partial_rotary_factor);
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& config_json) {
  return from_json(models::read_json_file(config_json), config_json.string());
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& origin) {
  JsonFields f(j, origin);
  ModelConfig c;
  c.raw = j;
  c.origin = origin;

  if (f.has("architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array()) f.fail("architectures", "expected a list of strings, got " + JsonFields::type_of(a));
    for (const auto& s : a)
      if (!s.is_string())
        f.fail("architectures", "expected a list of strings, found " + JsonFields::type_of(s));
    if (!a.empty()) c.architecture = a[0].get<std::string>();
  }
  auto mt = f.opt_str("model_type");
  if (!mt) f.fail("model_type", "missing (required)");
  c.model_type = *mt;
  const Family& fam = family_of(c.model_type);
  const std::string& t = c.model_type;

  // ---- shapes ----
  // gpt2 names its fields n_embd/n_layer/n_head (hidden_size... are attribute_map aliases);
  // bloom names n_layer/n_head and accepts an n_embed kwarg.
  auto aliased = [](const char* fam_key, const char* canonical) {
    return fam_key ? std::pair{fam_key, canonical} : std::pair{canonical, (const char*)nullptr};
  };
  auto [hid_field, hid_override] = aliased(fam.hidden_key, "hidden_size");
  if (t == "bloom") std::tie(hid_field, hid_override) = std::pair{"hidden_size", "n_embed"};
  auto [lay_field, lay_override] = aliased(fam.layers_key, "num_hidden_layers");
  auto [head_field, head_override] = aliased(fam.heads_key, "num_attention_heads");
  c.vocab_size = shape_field(f, "vocab_size").value;
  c.hidden_size = shape_field(f, hid_field, hid_override).value;
  c.num_hidden_layers = shape_field(f, lay_field, lay_override, kMaxLayers).value;
  const Shape heads = shape_field(f, head_field, head_override);
  c.num_attention_heads = heads.value;
  if (t == "gpt2")
    c.intermediate_size = f.has("n_inner") ? shape_field(f, "n_inner").value : 4 * c.hidden_size;
  else if (t == "bloom")
    c.intermediate_size = 4 * c.hidden_size;
  else if (t == "opt")
    c.intermediate_size = shape_field(f, "ffn_dim").value;
  else
    c.intermediate_size = shape_field(f, "intermediate_size").value;

  if (fam.max_pos_key) {
    std::string k = t == "gpt2" && f.has("max_position_embeddings") ? "max_position_embeddings"
                                                                    : fam.max_pos_key;  // attribute_map
    c.max_position_embeddings = f.int_or(k, fam.max_pos);
    if (c.max_position_embeddings <= 0) f.fail(k, "must be positive");
  }

  const bool explicit_head_dim = !is_mha_family(t) && f.has("head_dim");
  if (explicit_head_dim)
    c.head_dim = f.req_int("head_dim");
  else if (fam.head_dim)
    c.head_dim = fam.head_dim;
  else
    c.head_dim = c.hidden_size / c.num_attention_heads;
  if (c.head_dim <= 0) f.fail("head_dim", "must be positive");
  if ((fam.head_dim == 0 && !explicit_head_dim) || fam.checks_divisible) {
    if (c.hidden_size % c.num_attention_heads != 0)
      f.fail(heads.key, "hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of " +
                            std::to_string(c.num_attention_heads) + " attention heads");
  }
  if (is_mha_family(t))
    c.num_key_value_heads = c.num_attention_heads;
  else
    c.num_key_value_heads =
        f.int_or("num_key_value_heads", fam.kv_heads ? fam.kv_heads : c.num_attention_heads);
  if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0)
    f.fail("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide " +
                                      std::to_string(c.num_attention_heads) + " attention heads");

  // ---- norms, activation, biases, tying ----
  c.norm_eps = fam.eps_key ? f.num_or(fam.eps_key, fam.eps) : fam.eps;
  c.hidden_act = fam.act_key ? f.str_or(fam.act_key, fam.act) : fam.act;
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", fam.tie);
  if (t == "gpt2" || t == "bloom") {
    c.attention_bias = c.mlp_bias = true;
  } else if (t == "opt") {
    c.attention_bias = c.mlp_bias = f.bool_or("enable_bias", true);
  } else if (t == "gpt_neox") {
    c.attention_bias = f.bool_or("attention_bias", true);
    c.mlp_bias = true;
  } else if (t == "qwen2") {
    c.attention_bias = true;  // q/k/v always biased (o_proj never); Qwen2Config has no such field
  } else {
    c.attention_bias = f.bool_or("attention_bias", false);
    c.mlp_bias = f.bool_or("mlp_bias", false);
  }

  // ---- special tokens ----
  auto tok = [&](const char* key, std::optional<int64_t> def) -> std::optional<int64_t> {
    if (!j.contains(key)) return def;  // absent: the class default; explicit null: none
    return f.opt_int(key);
  };
  c.bos_token_id = tok("bos_token_id", fam.bos);
  c.pad_token_id = tok("pad_token_id", fam.pad);
  if (!j.contains("eos_token_id")) {
    if (fam.eos) c.eos_token_id = {*fam.eos};
  } else {
    c.eos_token_id = f.int_or_int_list("eos_token_id");
  }

  // ---- family specifics ----
  if (t == "gemma2") {
    c.query_pre_attn_scalar = f.num_or("query_pre_attn_scalar", 256);
    c.final_logit_softcapping =
        j.contains("final_logit_softcapping") ? f.opt_num("final_logit_softcapping") : 30.0;
    c.attn_logit_softcapping =
        j.contains("attn_logit_softcapping") ? f.opt_num("attn_logit_softcapping") : 50.0;
  }
  if (t == "gpt_neox") c.use_parallel_residual = f.bool_or("use_parallel_residual", true);
  if (t == "gpt2") {
    c.scale_attn_weights = f.bool_or("scale_attn_weights", true);
    c.scale_attn_by_inverse_layer_idx = f.bool_or("scale_attn_by_inverse_layer_idx", false);
    c.reorder_and_upcast_attn = f.bool_or("reorder_and_upcast_attn", false);
  }
  if (t == "opt") {
    c.do_layer_norm_before = f.bool_or("do_layer_norm_before", true);
    c._remove_final_layer_norm = f.bool_or("_remove_final_layer_norm", false);
    c.word_embed_proj_dim = f.int_or("word_embed_proj_dim", c.hidden_size);
    if (c.word_embed_proj_dim <= 0) f.fail("word_embed_proj_dim", "must be positive");
    c.layer_norm_elementwise_affine = f.bool_or("layer_norm_elementwise_affine", true);
  }
  if (t == "bloom") {
    c.apply_residual_connection_post_layernorm = f.bool_or("apply_residual_connection_post_layernorm", false);
    c.pretraining_tp = f.int_or("pretraining_tp", 1);
    c.slow_but_exact = f.bool_or("slow_but_exact", false);
  }

  // ---- sliding window and layer types ----
  const int64_t L = c.num_hidden_layers;
  if (fam.sliding_window || t == "phi3") {
    c.sliding_window = j.contains("sliding_window") ? f.opt_int("sliding_window") : fam.sliding_window;
    if (c.sliding_window && *c.sliding_window <= 0) f.fail("sliding_window", "must be positive");
  }
  std::vector<std::string> derived(size_t(L), "full_attention");
  if (t == "qwen2" || t == "qwen3") {
    c.use_sliding_window = f.bool_or("use_sliding_window", false);
    c.max_window_layers = f.int_or("max_window_layers", 28);
    if (!c.use_sliding_window) c.sliding_window = std::nullopt;
    for (int64_t i = 0; i < L; ++i)
      if (c.sliding_window && i >= c.max_window_layers) derived[size_t(i)] = "sliding_attention";
  } else if (t == "gemma2") {
    for (int64_t i = 0; i < L; ++i)
      if ((i + 1) % 2) derived[size_t(i)] = "sliding_attention";
  } else if ((t == "mistral" || t == "phi3") && c.sliding_window) {
    std::fill(derived.begin(), derived.end(), "sliding_attention");
  }
  // Only classes with a layer_types field read it; for the others it is an unused attribute.
  if ((t == "qwen2" || t == "qwen3" || t == "gemma2") && f.has("layer_types")) {
    const json& lt = j.at("layer_types");
    if (!lt.is_array()) f.fail("layer_types", "expected a list of strings, got " + JsonFields::type_of(lt));
    if (int64_t(lt.size()) != L)
      f.fail("layer_types",
             "has " + std::to_string(lt.size()) + " entries for " + std::to_string(L) + " layers");
    for (size_t i = 0; i < lt.size(); ++i) {
      if (!lt[i].is_string() || (lt[i] != "full_attention" && lt[i] != "sliding_attention"))
        f.fail("layer_types", "entry " + std::to_string(i) + " is " + lt[i].dump() +
                                  "; supported: \"full_attention\", \"sliding_attention\"");
      derived[i] = lt[i].get<std::string>();
    }
  }
  c.layer_types = std::move(derived);

  // ---- rope ----
  if (fam.has_rope) {
    c.rope = parse_rope(f, c);
    const int64_t dim = c.rope_dim();
    // An odd rotary width breaks transformers too (cat(freqs, freqs) is one wider than it).
    if (dim < 2 || dim % 2)
      f.fail(c.rope->partial_rotary_factor != 1.0 ? "partial_rotary_factor" : "head_dim",
             "gives " + std::to_string(dim) + " rotary dims per head (need an even number >= 2)");
    if (c.rope->rope_type == "dynamic" && dim == 2)
      f.fail("head_dim", "dynamic rope needs more than 2 rotary dims");
    if (c.rope->rope_type == "longrope") {
      const size_t want = size_t(dim / 2);
      const char* src =
          f.has("rope_scaling") && !j.at("rope_scaling").empty() ? "rope_scaling." : "rope_parameters.";
      for (auto [name, v] :
           {std::pair{"short_factor", &c.rope->short_factor}, {"long_factor", &c.rope->long_factor}})
        if (v->size() != want)
          f.fail(std::string(src) + name,
                 "has " + std::to_string(v->size()) + " entries, expected " + std::to_string(want));
    }
  }

  // ---- dtype: v5 writes "dtype", v4 "torch_dtype"; transformers keeps dtype when both ----
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (!f.has(key)) continue;
    std::string s = *f.opt_str(key);
    auto dt = dtype_from_torch(s);
    if (!dt) f.fail(key, "'" + s + "' is not a torch dtype nibble knows");
    c.torch_dtype = dt;
    break;
  }
  return c;
}

}  // namespace nibble
