// PeftModel: a LoraAdapter attached to a CausalLM's Linears (NamedLinear::lora shares the
// adapter's tensors, so training updates are seen by every forward), peft's folder in and out,
// and merge_and_unload.
#include <cmath>

#include "models/causal_lm_impl.h"
#include "nibble/quant.h"
#include "nibble/train.h"
#include "ops/nn_ops.h"

namespace nibble {

using detail::str;

std::vector<LinearSite> linear_sites(const CausalLM& model) {
  const auto lins = model.impl().linears();
  std::vector<LinearSite> out;
  for (size_t i = 0; i < lins.size(); ++i)
    out.push_back(
        {lins[i]->name, lins[i]->lin.in_features(), lins[i]->lin.out_features(), i + 1 == lins.size()});
  return out;
}

PeftModel::PeftModel(CausalLM base, LoraAdapter adapter)
    : base_(std::move(base)), adapter_(std::move(adapter)) {
  attach();
}
PeftModel::PeftModel(PeftModel&&) noexcept = default;
PeftModel& PeftModel::operator=(PeftModel&&) noexcept = default;
PeftModel::~PeftModel() = default;

namespace {
template <typename Fn>
void for_each_linear(CausalLM::Impl& m, Fn&& fn) {
  for (DecoderLayer& L : m.layers) {
    for (auto& l : L.qkv) fn(l);
    fn(L.o);
    for (auto& l : L.mlp) fn(l);
  }
  fn(m.lm_head);
}
}  // namespace

namespace {
// Every Linear named in a gets its tensors (shared storage), scaling and dropout; others none.
void attach_lora(CausalLM::Impl& m, const LoraAdapter& a) {
  const LoraConfig& c = a.config;
  if (c.use_dora) throw UnsupportedError("LoRA adapter: use_dora (DoRA) is not supported");
  if (c.lora_bias) throw UnsupportedError("LoRA adapter: lora_bias is not supported");
  for_each_linear(m, [&](NamedLinear& nl) {
    nl.lora = {};
    auto it = a.modules.find(nl.name);
    if (it == a.modules.end()) return;
    // the same storage on the CPU; a device copy on a CUDA model (copy_adapter_to_device)
    nl.lora.A = it->second.A.to(m.device);
    nl.lora.B = it->second.B.to(m.device);
    // alpha_pattern: peft picks a module's alpha by the first matching key
    double r = double(nl.lora.A.size(0)), alpha = c.lora_alpha;
    for (const auto& [k, al] : c.alpha_pattern)
      if (nl.name == k || nl.name.ends_with("." + k)) alpha = al;
    nl.lora.scale = float(c.use_rslora ? alpha / std::sqrt(r) : alpha / r);
    nl.lora.dropout = float(c.lora_dropout);
    nl.lora.tf32 = !m.device.is_cpu() && m.cache_dtype(m.device) != DType::F32;
  });
}
}  // namespace

void PeftModel::attach() {
  attach_lora(base_.impl(), adapter_);
}

void PeftModel::sync_host() const {
  if (!host_stale_) return;
  host_stale_ = false;
  for (const NamedLinear* nl : base_.impl().linears()) {
    if (!nl->lora.defined()) continue;
    LoraPair& p = adapter_.modules.at(nl->name);
    p.A.copy_from(nl->lora.A);
    p.B.copy_from(nl->lora.B);
  }
}

void PeftModel::copy_adapter_to_device() {
  CausalLM::Impl& m = base_.impl();
  host_stale_ = false;
  if (m.device.is_cpu()) return;  // shared storage
  for_each_linear(m, [&](NamedLinear& nl) {
    if (!nl.lora.defined()) return;
    const LoraPair& p = adapter_.modules.at(nl.name);
    nl.lora.A.copy_from(p.A);
    nl.lora.B.copy_from(p.B);
  });
}

void attach_adapter(CausalLM& model, const std::filesystem::path& dir) {
  if (model.impl().place.split())
    throw UnsupportedError("--adapter: LoRA adapters run on a model on one device (not split over devices)");
  attach_lora(model.impl(), LoraAdapter::load(dir, linear_sites(model)));
}

PeftModel PeftModel::get_peft_model(CausalLM base, const LoraConfig& cfg, uint64_t seed) {
  LoraAdapter a = LoraAdapter::init(cfg, linear_sites(base), seed);
  return PeftModel(std::move(base), std::move(a));
}

PeftModel PeftModel::from_pretrained(CausalLM base, const std::filesystem::path& dir) {
  LoraAdapter a = LoraAdapter::load(dir, linear_sites(base));
  return PeftModel(std::move(base), std::move(a));
}

int64_t PeftModel::num_trainable_parameters() const {
  int64_t n = 0;
  for (const auto& [name, p] : adapter_.modules) n += p.A.numel() + p.B.numel();
  return n;
}

LoraAdapter PeftModel::adapter_to_save() const {
  sync_host();
  LoraAdapter a;
  a.config = adapter_.config;
  a.modules = adapter_.modules;
  a.config.inference_mode = true;  // peft's save_pretrained
  if (!a.config.base_model_name_or_path && !base_.impl().source_dir.empty())
    a.config.base_model_name_or_path = base_.impl().source_dir.string();
  return a;
}

void PeftModel::save_pretrained(const std::filesystem::path& dir) const {
  adapter_to_save().save(dir);
}

CausalLM PeftModel::merge_and_unload(bool requantize) && {
  sync_host();
  CausalLM::Impl& m = base_.impl();
  if (!m.device.is_cpu() || m.place.split())
    throw UnsupportedError("merge_and_unload: the model must be on the CPU");
  const std::optional<BitsAndBytesConfig> qc = m.qc;
  for_each_linear(m, [&](NamedLinear& nl) {
    const bool adapted = nl.lora.defined();
    const nn::Linear& l = nl.lin;
    if (!adapted && (requantize || l.format() == nn::WeightFormat::Fp)) return;
    Tensor w = l.traits().dequantize(l);  // f32 [out, in], owned
    if (adapted) {
      const int64_t out = l.out_features(), in = l.in_features(), r = nl.lora.r();
      const float *A = nl.lora.A.data<float>(), *B = nl.lora.B.data<float>();
      float* W = w.data<float>();
      for (int64_t n = 0; n < out; ++n)
        for (int64_t j = 0; j < r; ++j) {
          const float b = nl.lora.scale * B[n * r + j];
          for (int64_t k = 0; k < in; ++k) W[n * in + k] += b * A[j * in + k];
        }
    }
    nl.lora = {};
    if (requantize && l.format() != nn::WeightFormat::Fp) {
      if (l.is_4bit()) {
        const QuantState4& st = l.quant_state();
        Quantized4 q = quantize_4bit(w, st.quant_type, st.blocksize, st.nested);
        nl.lin = nn::Linear::four_bit(q.packed, q.state, l.bias(), l.compute_dtype());
      } else {
        Int8Rowwise q = int8_vectorwise_quant(ops::to_dtype(w, DType::F16), 0.0f);
        nl.lin = nn::Linear::int8(q.CA, q.SCA, l.bias(), l.threshold());
      }
      return;
    }
    nl.lin = nn::Linear::fp(w, l.bias());
  });
  if (!requantize) m.qc.reset();  // a plain (f32) model now: save_pretrained writes no quant state
  adapter_ = {};
  return std::move(base_);
}

}  // namespace nibble
