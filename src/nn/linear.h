// Linear: the one choke point for every projection. The base weight is one of
//   fp:    W [out, in] as stored (f32/f16/bf16), converted on the fly;
//   4-bit: bitsandbytes packed NF4/FP4 + QuantState4 (absmax dequantized once, cached);
//   8-bit: LLM.int8 CB [out, in] int8 + SCB [out];
// plus an optional bias. forward: y = W x + b (the LoRA term joins here later).
#pragma once

#include <string>

#include "nibble/quant.h"
#include "nibble/tensor.h"

namespace nibble::nn {

enum class WeightFormat { Fp, Nf4, Fp4, Int8 };

class Linear {
 public:
  Linear() = default;
  static Linear fp(Tensor w, Tensor bias);
  static Linear four_bit(Tensor packed, QuantState4 state, Tensor bias, DType compute_dtype);
  static Linear int8(Tensor cb, Tensor scb, Tensor bias, float threshold);

  // x: f32 [M, in] -> f32 [M, out]
  Tensor forward(const Tensor& x) const;

  WeightFormat format() const { return format_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const Tensor& weight() const { return weight_; }  // fp W, packed 4-bit bytes, or int8 CB
  const Tensor& bias() const { return bias_; }
  const QuantState4& quant_state() const { return state_; }
  const Tensor& scb() const { return scb_; }
  DType compute_dtype() const { return compute_dtype_; }
  // transformers' class name: Linear, Linear4bit, Linear8bitLt
  const char* class_name() const;
  // get_memory_footprint's count: parameters + buffers (packed bytes for 4-bit, CB for 8-bit).
  int64_t footprint_bytes() const;

 private:
  WeightFormat format_ = WeightFormat::Fp;
  Tensor weight_, bias_, scb_, absmax_f32_;
  QuantState4 state_;
  DType compute_dtype_ = DType::F32;
  float threshold_ = 6.0f;
  int64_t in_ = 0, out_ = 0;
};

}  // namespace nibble::nn
