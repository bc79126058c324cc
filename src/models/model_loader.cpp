// AutoModelForCausalLM::from_pretrained: config -> ArchSpec -> every module's tensors, with
// Linear weights quantized as they are read (BitsAndBytesConfig) or taken as bitsandbytes
// saved them (pre-quantized folders: the quant_state / SCB entries decide, per weight).
// Which modules stay unquantized follows transformers: llm_int8_skip_modules when given,
// otherwise the output head (and what is tied to it), plus keep-in-fp32 modules; a module is
// skipped when its name equals a key or contains key + ".".
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "models/causal_lm_impl.h"
#include "nibble/error.h"
#include "nibble/quant.h"
#include "ops/nn_ops.h"

namespace nibble {

using detail::str;

namespace {

ops::Activation activation_for(const std::string& name, const std::string& where) {
  if (name == "silu" || name == "swish") return ops::Activation::SiLU;
  if (name == "gelu") return ops::Activation::GeluErf;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast" || name == "bloom_gelu")
    return ops::Activation::GeluTanh;
  if (name == "relu") return ops::Activation::ReLU;
  throw ConfigError(str(where, ": unsupported activation '", name, "'"));
}

// Tensors by name, resolving tied aliases (__metadata__ name -> name) and absent tied heads.
class WeightSource {
 public:
  explicit WeightSource(const Checkpoint& ck) : ck_(ck) {
    for (const auto& [k, v] : ck.metadata())
      if (k != "format" && ck.contains(v)) alias_[k] = v;
  }
  bool has(const std::string& name) const { return ck_.contains(name) || alias_.count(name); }
  Tensor get(const std::string& name) const {
    if (ck_.contains(name)) return ck_.get(name);
    auto it = alias_.find(name);
    if (it != alias_.end()) return ck_.get(it->second);
    throw FormatError(str("checkpoint lacks tensor '", name, "'"));
  }
  Tensor get_or_none(const std::string& name) const { return has(name) ? get(name) : Tensor(); }
  void release(const std::string& name) const { ck_.release(name); }

 private:
  const Checkpoint& ck_;
  std::map<std::string, std::string> alias_;
};

struct Loader {
  CausalLM::Impl& m;
  const WeightSource& src;
  const models::ArchSpec& spec;
  bool quantize_on_load = false;  // quantize fp weights as they are read
  DType compute_dtype = DType::F32;
  Device target = Device::cpu();  // where the module being read goes: 4-bit weights are quantized there
  std::set<std::string>* used = nullptr;  // tensor names consumed (to report leftovers)

  Tensor take(const std::string& name) {
    used->insert(name);
    return src.get(name);
  }
  Tensor take_opt(const std::string& name) {
    if (!src.has(name)) return {};
    return take(name);
  }

  void expect_shape(const Tensor& t, const Shape& s, const std::string& name) {
    if (t.shape() != s)
      throw FormatError(str("tensor '", name, "' has shape ", shape_str(t.shape()), ", expected ", shape_str(s)));
  }

  Norm norm(const std::string& module, int64_t width, bool with_bias) {
    Norm n;
    n.w = take(module + ".weight");
    expect_shape(n.w, {width}, module + ".weight");
    if (with_bias) {
      n.b = take(module + ".bias");
      expect_shape(n.b, {width}, module + ".bias");
    }
    return n;
  }

  bool skipped(const std::string& module) const {
    return m.qc && !models::unquantized_reason(spec, *m.qc, module, false).empty();
  }

  // module: tensor prefix in the file; module_name: transformers' module path when it differs.
  NamedLinear linear(const std::string& module, int64_t out, int64_t in, const std::string& module_name = "") {
    NamedLinear nl{module_name.empty() ? module : module_name, {}, {}};
    Tensor bias = take_opt(module + ".bias");
    if (bias.defined()) expect_shape(bias, {out}, module + ".bias");
    std::string w = module + ".weight";
    // pre-quantized 4-bit: the quant_state blob names the format
    for (const char* qt : {"nf4", "fp4"}) {
      std::string blob = w + ".quant_state.bitsandbytes__" + qt;
      if (!src.has(blob)) continue;
      std::map<std::string, Tensor> d;
      for (const char* k : {"absmax", "quant_map", "nested_absmax", "nested_quant_map"})
        if (src.has(w + "." + k)) d[k] = take(w + "." + k);
      d[std::string("quant_state.bitsandbytes__") + qt] = take(blob);
      QuantState4 st = quant_state_from_dict(d, w);
      if (st.shape != Shape{out, in})
        throw FormatError(str("tensor '", w, "': quant_state shape ", shape_str(st.shape), ", expected ",
                              shape_str({out, in})));
      Tensor packed = take(w);
      if (packed.dtype() != DType::U8 || packed.numel() != (out * in + 1) / 2)
        throw FormatError(str("tensor '", w, "': expected ", (out * in + 1) / 2, " packed uint8 bytes, found ",
                              packed.str()));
      nl.lin = nn::Linear::four_bit(packed, st, bias, compute_dtype);
      return nl;
    }
    if (src.has(module + ".SCB")) {
      Tensor cb = take(w), scb = take(module + ".SCB");
      if (src.has(module + ".weight_format")) {
        Tensor f = take(module + ".weight_format");
        if (f.numel() != 1 || load_as_f32(f.data_ptr(), f.dtype(), 0) != 0.0f)
          throw FormatError(str("tensor '", module, ".weight_format': only the row layout (0) is supported"));
      }
      expect_shape(cb, {out, in}, w);
      if (cb.dtype() != DType::I8) throw FormatError(str("tensor '", w, "': int8 weight expected, found ", cb.str()));
      expect_shape(scb, {out}, module + ".SCB");
      nl.lin = nn::Linear::int8(cb, scb.to(DType::F32), bias, float(m.qc ? m.qc->llm_int8_threshold : 6.0));
      return nl;
    }
    if (src.has(w + ".absmax") || src.has(w + ".quant_map"))
      throw FormatError(str("tensor '", w, "' has 4-bit quantization entries but no quant_state blob"));
    Tensor weight = take(w);
    if (!is_float(weight.dtype()))
      throw FormatError(str("tensor '", w, "': expected a float weight, found ", weight.str()));
    if (spec.conv1d) {
      expect_shape(weight, {in, out}, w + " (Conv1D, stored [in, out])");
      weight = weight.transpose(0, 1).contiguous();
    } else {
      expect_shape(weight, {out, in}, w);
    }
    if (quantize_on_load && !skipped(nl.name)) {
      const BitsAndBytesConfig& qc = *m.qc;
      if (qc.load_in_4bit) {
        Tensor x = weight.dtype() == DType::F64 || weight.dtype() == DType::F8_E4M3 || weight.dtype() == DType::F8_E5M2
                       ? weight.to(DType::F32)
                       : weight;
        if (target.is_cuda()) {  // upload the 16-bit weight and quantize it with the GPU kernels
          x = x.to(target);
          if (bias.defined()) bias = bias.to(target);
        }
        Quantized4 q = quantize_4bit(x, qc.bnb_4bit_quant_type == "nf4" ? DType::NF4 : DType::FP4, 64,
                                     qc.bnb_4bit_use_double_quant);
        nl.lin = nn::Linear::four_bit(q.packed, q.state, bias, compute_dtype);
      } else {
        Int8Rowwise q = int8_vectorwise_quant(ops::to_dtype(weight, DType::F16), 0.0f);
        nl.lin = nn::Linear::int8(q.CA, q.SCA, bias, float(qc.llm_int8_threshold));
      }
      src.release(w);  // the original bytes are no longer needed in memory
      return nl;
    }
    nl.lin = nn::Linear::fp(weight, bias);
    return nl;
  }
};

std::vector<float> bloom_alibi_slopes(int64_t n_heads) {
  // transformers' build_alibi_tensor: geometric slopes for the largest power of two <= heads,
  // then every other slope of the next power of two for the remaining heads (f32 pow).
  int64_t p2 = int64_t(1) << int64_t(std::floor(std::log2(double(n_heads))));
  float base = float(std::pow(2.0, -std::pow(2.0, -(std::log2(double(p2)) - 3))));
  std::vector<float> s;
  for (int64_t i = 1; i <= p2; ++i) s.push_back(std::pow(base, float(i)));
  if (p2 != n_heads) {
    float extra = float(std::pow(2.0, -std::pow(2.0, -(std::log2(double(2 * p2)) - 3))));
    int64_t rem = std::min(p2, n_heads - p2);
    for (int64_t i = 1; i < 1 + 2 * rem; i += 2) s.push_back(std::pow(extra, float(i)));
  }
  return s;
}

}  // namespace

namespace {
CausalLM load(const std::filesystem::path& dir, const LoadOptions& opts);
}

CausalLM AutoModelForCausalLM::from_pretrained(const std::filesystem::path& dir, const LoadOptions& opts) {
  // Tensor-level errors get the folder they came from; config errors already name the file.
  try {
    return load(dir, opts);
  } catch (const FormatError& e) {
    std::string msg = e.what();
    if (msg.find(dir.string()) != std::string::npos) throw;
    throw FormatError(dir.string() + ": " + msg);
  }
}

namespace {

CausalLM load(const std::filesystem::path& dir, const LoadOptions& opts) {
  CausalLM model;
  CausalLM::Impl& m = model.impl();
  m.config = ModelConfig::from_file(dir / "config.json");
  const ModelConfig& c = m.config;
  m.spec = &models::arch_spec(c.architecture);
  const models::ArchSpec& spec = *m.spec;

  bool prequantized = c.raw.contains("quantization_config");
  if (prequantized) m.qc = BitsAndBytesConfig::from_dict(c.raw.at("quantization_config"));
  else if (opts.quantization_config) m.qc = *opts.quantization_config;
  if (m.qc) {
    m.qc->validate();
    if (!m.qc->is_quantizable()) m.qc.reset();
  }
  LoadOptions placed = opts;
  placed.quantization_config = m.qc;
  // where each module goes (a split model's layers over devices; 4-bit weights are quantized there)
  m.device_map = resolve_load_map(c, placed, c.torch_dtype.value_or(DType::F32));
  const models::DevicePlan place = models::device_plan(c, spec, m.device_map);

  m.checkpoint.emplace(Checkpoint::open(dir));
  m.source_dir = dir;
  m.prequantized = prequantized && m.qc.has_value();
  WeightSource src(*m.checkpoint);
  std::set<std::string> used;
  Loader L{m, src, spec};
  L.target = place.embed;
  L.used = &used;
  L.quantize_on_load = m.qc.has_value() && !prequantized;
  L.compute_dtype = m.qc ? m.qc->compute_dtype() : DType::F32;

  const int64_t C = c.hidden_size, V = c.vocab_size;
  m.n_heads = c.num_attention_heads;
  m.n_kv_heads = c.num_key_value_heads;
  m.head_dim = c.head_dim;
  const int64_t D = m.head_dim, Hq = m.n_heads, Hkv = m.n_kv_heads;
  const bool ln = spec.norm == models::NormKind::Layer;
  const std::string P = spec.prefix;

  m.embed = L.take(P + spec.embed + ".weight");
  L.expect_shape(m.embed, {V, C}, P + spec.embed + ".weight");
  if (!spec.pos_embed.empty()) {
    m.pos_embed = L.take(P + spec.pos_embed + ".weight");
    if (m.pos_embed.dim() != 2 || m.pos_embed.size(1) != C)
      throw FormatError(str("tensor '", P, spec.pos_embed, ".weight' has shape ", shape_str(m.pos_embed.shape())));
  }
  if (!spec.embed_norm.empty()) m.embed_norm = L.norm(P + spec.embed_norm, C, ln);

  std::string act_name = c.hidden_act.empty() ? spec.default_act : c.hidden_act;
  m.act = activation_for(act_name, (dir / "config.json").string());
  m.parallel_residual = spec.parallel_residual && c.use_parallel_residual;

  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    std::string lp = P + spec.layers + "." + std::to_string(i) + ".";
    std::string ap = lp + spec.attn + ".";
    DecoderLayer layer;
    L.target = place.layers[size_t(i)];
    layer.attn_norm = L.norm(lp + spec.attn_norm, C, ln);
    layer.mlp_norm = L.norm(lp + spec.mlp_norm, C, ln);
    if (!spec.post_attn_norm.empty()) layer.post_attn_norm = L.norm(lp + spec.post_attn_norm, C, ln);
    if (!spec.post_mlp_norm.empty()) layer.post_mlp_norm = L.norm(lp + spec.post_mlp_norm, C, ln);
    if (!spec.q_norm.empty()) {
      layer.q_norm = L.norm(ap + spec.q_norm, D, false);
      layer.k_norm = L.norm(ap + spec.k_norm, D, false);
    }
    if (spec.qkv == models::QkvKind::Separate) {
      layer.qkv.push_back(L.linear(ap + spec.qkv_names[0], Hq * D, C));
      layer.qkv.push_back(L.linear(ap + spec.qkv_names[1], Hkv * D, C));
      layer.qkv.push_back(L.linear(ap + spec.qkv_names[2], Hkv * D, C));
    } else {
      layer.qkv.push_back(L.linear(ap + spec.qkv_names[0], (Hq + 2 * Hkv) * D, C));
    }
    layer.o = L.linear(ap + spec.o_proj, C, Hq * D);
    std::string mp = spec.mlp.empty() ? lp : lp + spec.mlp + ".";
    const int64_t F = c.intermediate_size;
    switch (spec.mlp_kind) {
      case models::MlpKind::Gated:
        layer.mlp.push_back(L.linear(mp + spec.mlp_names[0], F, C));
        layer.mlp.push_back(L.linear(mp + spec.mlp_names[1], F, C));
        layer.mlp.push_back(L.linear(mp + spec.mlp_names[2], C, F));
        break;
      case models::MlpKind::GatedFused:
        layer.mlp.push_back(L.linear(mp + spec.mlp_names[0], 2 * F, C));
        layer.mlp.push_back(L.linear(mp + spec.mlp_names[1], C, F));
        break;
      case models::MlpKind::Plain:
        layer.mlp.push_back(L.linear(mp + spec.mlp_names[0], F, C));
        layer.mlp.push_back(L.linear(mp + spec.mlp_names[1], C, F));
        break;
    }
    layer.sliding = c.layer_is_sliding(i);
    m.layers.push_back(std::move(layer));
  }
  m.final_norm = L.norm(P + spec.final_norm, C, ln);

  // The output head: its own weight, or the embedding when tied and the head is absent.
  std::string head = spec.lm_head_tensor.empty() ? spec.lm_head : spec.lm_head_tensor;
  L.target = place.lm_head;
  if (src.has(head + ".weight")) {
    m.lm_head = L.linear(head, V, C, spec.lm_head);
  } else if (c.tie_word_embeddings) {
    m.lm_head = NamedLinear{spec.lm_head, nn::Linear::fp(m.embed, Tensor()), {}};
  } else {
    throw FormatError(str("checkpoint lacks tensor '", head, ".weight' (and tie_word_embeddings is false)"));
  }
  m.tied_head = c.tie_word_embeddings;

  // Positions.
  if (spec.pos == models::PosKind::Rope) m.rope.emplace(c);
  m.generation = GenerationConfig::from_pretrained(dir, c);
  if (spec.pos == models::PosKind::Alibi) {
    std::vector<float> slopes = bloom_alibi_slopes(Hq);
    m.alibi_slopes = Tensor::from_vector({Hq}, DType::F32, slopes);
  }
  m.attn_scale = 1.0f / std::sqrt(float(D));
  if (c.query_pre_attn_scalar) m.attn_scale = float(1.0 / std::sqrt(*c.query_pre_attn_scalar));
  m.attn_softcap = c.attn_logit_softcapping ? std::optional<float>(float(*c.attn_logit_softcapping)) : std::nullopt;
  m.final_softcap = c.final_logit_softcapping ? std::optional<float>(float(*c.final_logit_softcapping)) : std::nullopt;

  // Every tensor in the file must have been used (aliases of used ones excepted).
  for (const auto& name : m.checkpoint->names()) {
    if (used.count(name)) continue;
    bool alias_used = false;
    for (const auto& [k, v] : m.checkpoint->metadata())
      if ((k == name && used.count(v)) || (v == name && used.count(k))) alias_used = true;
    // buffers older exports carry (causal masks, rotary tables): transformers ignores them too
    for (const char* buf : {".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"})
      if (name.ends_with(buf)) alias_used = true;
    if (!alias_used) throw FormatError(str("unexpected tensor '", name, "' in ", dir.string(), " for ", c.architecture));
  }
  m.device = Device::cpu();
  m.place = models::DevicePlan::uniform(Device::cpu(), c.num_hidden_layers);
  m.to_devices(place);
  return model;
}

}  // namespace

Device resolve_device_map(const std::string& map) {
  if (map == "cpu") return Device::cpu();
  if (map == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  if (map == "cuda" || map.starts_with("cuda:")) {
    int index = 0;
    if (map.size() > 4) {
      const std::string n = map.substr(5);
      if (n.empty() || n.size() > 3 || n.find_first_not_of("0123456789") != std::string::npos)
        throw ConfigError(str("device_map '", map, "': expected cuda:N"));
      index = std::stoi(n);
    }
    const int count = cuda_device_count();
    if (count == 0)
      throw UnsupportedError(str("device_map '", map, "': no CUDA device",
#ifdef NIBBLE_WITH_CUDA
                                 " is visible"
#else
                                 " (this build has no CUDA backend)"
#endif
                                 ));
    if (index >= count) throw ConfigError(str("device_map '", map, "': only ", count, " CUDA device(s) visible"));
    return Device::cuda(index);
  }
  throw ConfigError(str("device_map '", map,
                        "' is not supported (cpu, cuda, cuda:N or auto; balanced, "
                        "balanced_low_0, sequential or an explicit map place a model over devices)"));
}

}  // namespace nibble
