// Linear: construction, device placement and the per-format traits table.
#include "nn/linear.h"

#include "nibble/error.h"
#include "ops/nn_ops.h"

namespace nibble::nn {

using detail::str;

Linear Linear::fp(Tensor w, Tensor bias) {
  if (w.dim() != 2) throw ShapeError(str("Linear weight must be 2-D, got ", w.str()));
  Linear l;
  l.format_ = WeightFormat::Fp;
  l.out_ = w.size(0);
  l.in_ = w.size(1);
  l.weight_ = std::move(w);
  l.bias_ = std::move(bias);
  return l;
}

Linear Linear::four_bit(Tensor packed, QuantState4 state, Tensor bias, DType compute_dtype) {
  if (state.shape.size() != 2) throw ShapeError(str("Linear4bit: quantized weight shape ", shape_str(state.shape), " is not 2-D"));
  Linear l;
  l.format_ = state.quant_type == DType::NF4 ? WeightFormat::Nf4 : WeightFormat::Fp4;
  l.out_ = state.shape[0];
  l.in_ = state.shape[1];
  if (packed.device().is_cpu()) l.absmax_f32_ = dequantize_absmax(state);  // no per-call double-quant decode
  l.weight_ = std::move(packed);
  l.state_ = std::move(state);
  l.bias_ = std::move(bias);
  l.compute_dtype_ = compute_dtype;
  return l;
}

Linear Linear::int8(Tensor cb, Tensor scb, Tensor bias, float threshold) {
  if (cb.dim() != 2 || cb.dtype() != DType::I8) throw ShapeError(str("Linear8bitLt: weight must be int8 2-D, got ", cb.str()));
  if (scb.dtype() != DType::F32 || scb.numel() != cb.size(0))
    throw ShapeError(str("Linear8bitLt: SCB ", scb.str(), " does not fit weight ", cb.str()));
  Linear l;
  l.format_ = WeightFormat::Int8;
  l.out_ = cb.size(0);
  l.in_ = cb.size(1);
  l.weight_ = std::move(cb);
  l.scb_ = std::move(scb);
  l.bias_ = std::move(bias);
  l.threshold_ = threshold;
  return l;
}

Tensor Linear::forward(const Tensor& x) const {
  Shape s = x.shape();
  if (s.empty() || s.back() != in_)
    throw ShapeError(str(class_name(), ": input ", x.str(), " does not end in in_features ", in_));
  s.back() = out_;
  Tensor out = Tensor::empty(s, DType::F32, device());
  Tensor x2 = x.dim() == 2 ? x : x.contiguous().view({-1, in_});
  forward(ExecContext::current(device()), x2, out.view({x2.size(0), out_}));
  return out;
}

namespace {
Tensor to_dev(const Tensor& t, Device d) {
  return t.defined() ? t.to(d) : t;
}
}  // namespace

Linear Linear::to(Device dev) const {
  if (dev == device()) return *this;
  Linear l = *this;
  l.weight_ = to_dev(weight_, dev);
  l.bias_ = to_dev(bias_, dev);
  l.scb_ = to_dev(scb_, dev);
  l.state_.absmax = to_dev(state_.absmax, dev);
  l.state_.nested_absmax = to_dev(state_.nested_absmax, dev);
  l.absmax_f32_ = dev.is_cpu() && is_4bit() ? dequantize_absmax(l.state_) : Tensor();
  return l;
}

int64_t Linear::footprint_bytes() const {
  int64_t b = int64_t(weight_.nbytes());
  if (bias_.defined()) b += int64_t(bias_.nbytes());
  return b;
}

// ---- the traits table ----------------------------------------------------------------------------

namespace {

void forward_fp(ExecContext& ctx, const Linear& l, const Tensor& x, const Tensor& out) {
  ops::linear(ctx, x, l.weight(), l.bias(), DType::F32, out);
}
void forward_4bit(ExecContext& ctx, const Linear& l, const Tensor& x, const Tensor& out) {
  ops::linear_4bit(ctx, x, l.weight(), l.quant_state(), l.absmax_f32(), l.bias(), l.compute_dtype(), out);
}
void forward_int8(ExecContext& ctx, const Linear& l, const Tensor& x, const Tensor& out) {
  ops::linear_int8(ctx, x, l.weight(), l.scb(), l.bias(), l.threshold(), DType::F16, out);
}

Tensor host(const Tensor& t) {
  return t.device().is_cpu() ? t : t.to(Device::cpu());
}
Tensor dequant_fp(const Linear& l) {
  return host(l.weight()).to(DType::F32);
}
Tensor dequant_4bit(const Linear& l) {
  QuantState4 st = l.quant_state();
  st.absmax = host(st.absmax);
  st.nested_absmax = host(st.nested_absmax);
  return dequantize_4bit(host(l.weight()), st).to(DType::F32).view({l.out_features(), l.in_features()});
}
Tensor dequant_int8(const Linear& l) {
  return int8_vectorwise_dequant(host(l.weight()), host(l.scb()));
}

int64_t state_none(const Linear&) {
  return 0;
}
int64_t state_4bit(const Linear& l) {
  return l.quant_state().state_bytes();
}
int64_t state_int8(const Linear& l) {
  return int64_t(l.scb().nbytes());
}

void sd_fp(const Linear& l, std::map<std::string, Tensor>& sd) {
  sd["weight"] = l.weight();
}
void sd_4bit(const Linear& l, std::map<std::string, Tensor>& sd) {
  sd["weight"] = l.weight();
  for (auto& [k, v] : quant_state_to_dict(l.quant_state())) sd["weight." + k] = v;
}
void sd_int8(const Linear& l, std::map<std::string, Tensor>& sd) {
  sd["weight"] = l.weight();
  sd["SCB"] = l.scb();
  sd["weight_format"] = Tensor::from_vector<uint8_t>({}, DType::U8, {0});  // the row layout
}

// bitsandbytes' yardsticks (mean abs error of randn 1024x1024 at blocksize 64), scaled by 1.5
// for real weights, whose tails are heavier than a normal's; LLM.int8's row-wise absmax is held
// to blockwise 8-bit's bound.
const FormatTraits kTraits[] = {
    {WeightFormat::Fp, "fp", "Linear", false, 0.0, forward_fp, dequant_fp, state_none, sd_fp},
    {WeightFormat::Nf4, "nf4", "Linear4bit", true, 1.5 * 0.0728, forward_4bit, dequant_4bit, state_4bit, sd_4bit},
    {WeightFormat::Fp4, "fp4", "Linear4bit", true, 1.5 * 0.0965, forward_4bit, dequant_4bit, state_4bit, sd_4bit},
    {WeightFormat::Int8, "int8", "Linear8bitLt", true, 1.5 * 0.011, forward_int8, dequant_int8, state_int8, sd_int8},
};

}  // namespace

namespace {
bool same_4bit(const Linear& a, const Linear& b) {
  return a.is_4bit() && b.is_4bit() && a.compute_dtype() == b.compute_dtype();
}
ops::Linear4Ref ref4(const Linear& l, const Tensor& out) {
  return {l.weight(), l.quant_state(), l.absmax_f32(), l.bias(), out};
}
}  // namespace

void forward_group(ExecContext& ctx, const Tensor& x, std::span<const Linear* const> ls,
                   std::span<const Tensor> outs) {
  if (ls.size() != outs.size()) throw InternalError("forward_group: weights and outputs differ in number");
  bool grouped = !ls.empty() && ls.size() <= 3;
  for (const Linear* l : ls) grouped = grouped && same_4bit(*l, *ls[0]);
  if (!grouped) {
    for (size_t i = 0; i < ls.size(); ++i) ls[i]->forward(ctx, x, outs[i]);
    return;
  }
  std::vector<ops::Linear4Ref> refs;
  for (size_t i = 0; i < ls.size(); ++i) refs.push_back(ref4(*ls[i], outs[i]));
  ops::linear_4bit_group(ctx, x, refs, ls[0]->compute_dtype());
}

void forward_gated(ExecContext& ctx, const Tensor& x, const Linear& gate, const Linear& up, ops::Activation a,
                   const Tensor& gate_out, const Tensor& up_out, const Tensor& out) {
  if (same_4bit(gate, up)) {
    ops::linear_4bit_gated(ctx, x, ref4(gate, gate_out), ref4(up, up_out), a, gate.compute_dtype(), out);
    return;
  }
  gate.forward(ctx, x, gate_out);
  up.forward(ctx, x, up_out);
  ops::gated_activation(ctx, gate_out, up_out, a, out);
}

void forward_group(ExecContext& ctx, const ops::RmsNormInput& in, std::span<const Linear* const> ls,
                   std::span<const Tensor> outs) {
  if (ls.size() != outs.size()) throw InternalError("forward_group: weights and outputs differ in number");
  bool grouped = !ls.empty() && ls.size() <= 3;
  for (const Linear* l : ls) grouped = grouped && same_4bit(*l, *ls[0]);
  if (!grouped) return forward_group(ctx, ops::rms_norm_input(ctx, in), ls, outs);
  std::vector<ops::Linear4Ref> refs;
  for (size_t i = 0; i < ls.size(); ++i) refs.push_back(ref4(*ls[i], outs[i]));
  ops::linear_4bit_group(ctx, in, refs, ls[0]->compute_dtype());
}

void forward_gated(ExecContext& ctx, const ops::RmsNormInput& in, const Linear& gate, const Linear& up,
                   ops::Activation a, const Tensor& gate_out, const Tensor& up_out, const Tensor& out) {
  if (!same_4bit(gate, up))
    return forward_gated(ctx, ops::rms_norm_input(ctx, in), gate, up, a, gate_out, up_out, out);
  ops::linear_4bit_gated(ctx, in, ref4(gate, gate_out), ref4(up, up_out), a, gate.compute_dtype(), out);
}

const FormatTraits& format_traits(WeightFormat f) {
  for (const FormatTraits& t : kTraits)
    if (t.format == f) return t;
  throw InternalError("format_traits: unknown weight format");
}

}  // namespace nibble::nn
