// Footprint arithmetic from a config alone: the parameters and buffers transformers' model of
// that config holds, counted as get_memory_footprint counts them (4-bit weights as packed
// bytes, int8 weights as one byte each, quantization state left out), plus the true bytes
// with all bitsandbytes state. Parameter counting walks the same ArchSpec the loader reads.
#include <cmath>

#include "nibble/error.h"
#include "nibble/verify.h"
#include "verify/verify_internal.h"

namespace nibble {

namespace verify_detail {

std::vector<LinearShape> linear_shapes(const ModelConfig& c, const models::ArchSpec& spec) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const bool ab = c.attention_bias, mb = c.mlp_bias;
  const bool o_bias = c.model_type == "qwen2" ? false : ab;  // Qwen2: q/k/v biased, o_proj never
  std::vector<LinearShape> out;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    std::string lp = spec.prefix + spec.layers + "." + std::to_string(i) + ".";
    std::string ap = lp + spec.attn + ".";
    if (spec.qkv == models::QkvKind::Separate) {
      out.push_back({ap + spec.qkv_names[0], Hq * D, C, ab});
      out.push_back({ap + spec.qkv_names[1], Hkv * D, C, ab});
      out.push_back({ap + spec.qkv_names[2], Hkv * D, C, ab});
    } else {
      out.push_back({ap + spec.qkv_names[0], (Hq + 2 * Hkv) * D, C, ab});
    }
    out.push_back({ap + spec.o_proj, C, Hq * D, o_bias});
    std::string mp = spec.mlp.empty() ? lp : lp + spec.mlp + ".";
    switch (spec.mlp_kind) {
      case models::MlpKind::Gated:
        out.push_back({mp + spec.mlp_names[0], F, C, mb});
        out.push_back({mp + spec.mlp_names[1], F, C, mb});
        out.push_back({mp + spec.mlp_names[2], C, F, mb});
        break;
      case models::MlpKind::GatedFused:
        out.push_back({mp + spec.mlp_names[0], 2 * F, C, mb});
        out.push_back({mp + spec.mlp_names[1], C, F, mb});
        break;
      case models::MlpKind::Plain:
        out.push_back({mp + spec.mlp_names[0], F, C, mb});
        out.push_back({mp + spec.mlp_names[1], C, F, mb});
        break;
    }
  }
  out.push_back({spec.lm_head, c.vocab_size, C, false});
  return out;
}

}  // namespace verify_detail

FootprintReport footprint_from_config(const ModelConfig& c, const std::optional<BitsAndBytesConfig>& qc_in,
                                      DType param_dtype) {
  const models::ArchSpec& spec = models::arch_spec(c.architecture);
  std::optional<BitsAndBytesConfig> qc = qc_in;
  if (qc && !qc->is_quantizable()) qc.reset();
  if (qc) qc->validate();
  const int64_t C = c.hidden_size, D = c.head_dim;
  const int64_t pb = dtype_nbytes(param_dtype, 1);
  const bool ln = spec.norm == models::NormKind::Layer;

  // Everything but the Linear layers: embeddings, norms (weight, + bias for LayerNorm).
  int64_t other = c.vocab_size * C;
  if (!spec.pos_embed.empty()) other += (c.max_position_embeddings + spec.pos_offset) * C;
  const int64_t norm_c = ln ? 2 * C : C;
  if (!spec.embed_norm.empty()) other += norm_c;
  int64_t per_layer = 2 * norm_c;
  if (!spec.post_attn_norm.empty()) per_layer += norm_c;
  if (!spec.post_mlp_norm.empty()) per_layer += norm_c;
  if (!spec.q_norm.empty()) per_layer += 2 * D;
  other += per_layer * c.num_hidden_layers + norm_c;  // + the final norm

  FootprintReport r;
  r.params_total = other;
  int64_t bytes = other * pb, state = 0, q_bytes = 0;
  for (const auto& l : verify_detail::linear_shapes(c, spec)) {
    const int64_t n = l.out * l.in, nb = l.bias ? l.out : 0;
    const bool is_head = l.name == spec.lm_head;
    if (is_head && c.tie_word_embeddings) continue;  // the embedding's parameter, counted once
    r.params_total += n + nb;
    std::string why = qc ? models::unquantized_reason(spec, *qc, l.name, c.tie_word_embeddings) : "skip";
    if (!why.empty()) {
      int64_t eb = why == "keep-in-fp32" ? 4 : pb;
      bytes += (n + nb) * eb;
      continue;
    }
    bytes += nb * pb;
    int64_t w = 0, s = 0;
    if (qc->load_in_4bit) {
      w = (n + 1) / 2;
      int64_t blocks = (n + 63) / 64;
      s = 16 * 4;  // quant_map
      if (qc->bnb_4bit_use_double_quant)
        s += blocks + (blocks + 255) / 256 * 4 + 256 * 4 + 4;
      else
        s += blocks * 4;
    } else {
      w = n;
      s = l.out * 4;  // SCB
    }
    bytes += w;
    q_bytes += w + s;
    state += s;
    r.params_quantized += n;
  }
  // buffers: the rotary embedding's inv_freq and original_inv_freq (f32), Gemma's embed_scale
  if (spec.pos == models::PosKind::Rope) bytes += 2 * ((c.rope_dim() + 1) / 2) * 4;
  if (spec.scale_embeddings) bytes += 4;
  r.footprint_bytes = bytes;
  r.true_bytes = bytes + state;
  r.bits_per_param = r.params_quantized ? 8.0 * double(q_bytes) / double(r.params_quantized) : 0.0;
  if (qc || param_dtype != DType::F16) {
    r.footprint_16bit_bytes = footprint_from_config(c, std::nullopt, DType::F16).footprint_bytes;
  } else {
    r.footprint_16bit_bytes = bytes;
  }
  r.ratio_vs_16bit = double(r.footprint_16bit_bytes) / double(r.footprint_bytes);
  return r;
}

}  // namespace nibble
