// Linear forward through the ops layer, by weight format.
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
  l.absmax_f32_ = dequantize_absmax(state);
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
  switch (format_) {
    case WeightFormat::Fp: return ops::linear(x, weight_, bias_);
    case WeightFormat::Nf4:
    case WeightFormat::Fp4: {
      QuantState4 st = state_;
      st.absmax = absmax_f32_;  // already dequantized: no per-call double-quant decode
      st.nested = false;
      return ops::linear_4bit(x, weight_, st, bias_, compute_dtype_);
    }
    case WeightFormat::Int8: return ops::linear_int8(x, weight_, scb_, bias_, threshold_);
  }
  throw InternalError("Linear: bad format");
}

const char* Linear::class_name() const {
  switch (format_) {
    case WeightFormat::Fp: return "Linear";
    case WeightFormat::Nf4:
    case WeightFormat::Fp4: return "Linear4bit";
    case WeightFormat::Int8: return "Linear8bitLt";
  }
  return "Linear";
}

int64_t Linear::footprint_bytes() const {
  int64_t b = int64_t(weight_.nbytes());
  if (bias_.defined()) b += int64_t(bias_.nbytes());
  return b;
}

}  // namespace nibble::nn
