// Linear: the one choke point for every projection. The base weight is one of
//   fp:    W [out, in] as stored (f32/f16/bf16), converted on the fly;
//   4-bit: bitsandbytes packed NF4/FP4 + QuantState4 (on the CPU the absmax is dequantized
//          once and cached; CUDA kernels read the stored, possibly nested, absmax directly);
//   8-bit: LLM.int8 CB [out, in] int8 + SCB [out];
// plus an optional bias. forward: y = W x + b (the LoRA term joins here).
//
// Per-format behaviour lives in one traits table (FormatTraits, DESIGN.md §3.3): transformers'
// class name, the format's name, the quantization state's bytes, dequantization, the
// forward entry point and the state-dict entries bitsandbytes writes — so verify, save, the
// loader and the backends ask the table instead of switching on the format.
#pragma once

#include <map>
#include <span>
#include <string>

#include "core/exec_context.h"
#include "nibble/quant.h"
#include "nibble/tensor.h"
#include "ops/nn_ops.h"

namespace nibble::nn {

enum class WeightFormat { Fp, Nf4, Fp4, Int8 };

class Linear;

struct FormatTraits {
  WeightFormat format;
  const char* name;        // "fp", "nf4", "fp4", "int8" (verify's report)
  const char* class_name;  // transformers' module class: Linear, Linear4bit, Linear8bitLt
  bool quantized;
  // bitsandbytes' accuracy yardstick for the mean abs error of a randn weight (FORMATS.md §6),
  // 0 for fp.
  double error_yardstick;
  // out [M, out] = x [M, in] · W^T (+ b) on ctx's device.
  void (*forward)(ExecContext& ctx, const Linear& l, const Tensor& x, const Tensor& out);
  // The weight as computed with: f32 [out, in] on the host.
  Tensor (*dequantize)(const Linear& l);
  // Bytes of the quantization state beside the weight (absmax, nested state, code tables, SCB).
  int64_t (*state_bytes)(const Linear& l);
  // The entries save_pretrained writes for the weight (names relative to the module, e.g.
  // "weight", "weight.absmax", "SCB"), as bitsandbytes' state dict holds them.
  void (*state_dict)(const Linear& l, std::map<std::string, Tensor>& out);
};
const FormatTraits& format_traits(WeightFormat f);

class Linear {
 public:
  Linear() = default;
  static Linear fp(Tensor w, Tensor bias);
  static Linear four_bit(Tensor packed, QuantState4 state, Tensor bias, DType compute_dtype);
  static Linear int8(Tensor cb, Tensor scb, Tensor bias, float threshold);

  // x: f32 [M, in] -> f32 [M, out], on the weight's device.
  Tensor forward(const Tensor& x) const;
  // The same into out [M, out] (contiguous f32) on ctx's device; x may have strided rows.
  void forward(ExecContext& ctx, const Tensor& x, const Tensor& out) const { traits().forward(ctx, *this, x, out); }

  // This Linear with every tensor on dev (4-bit state included; the CPU absmax cache is kept
  // only on the CPU).
  Linear to(Device dev) const;
  Device device() const { return weight_.device(); }

  const FormatTraits& traits() const { return format_traits(format_); }
  WeightFormat format() const { return format_; }
  bool is_4bit() const { return format_ == WeightFormat::Nf4 || format_ == WeightFormat::Fp4; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const Tensor& weight() const { return weight_; }  // fp W, packed 4-bit bytes, or int8 CB
  const Tensor& bias() const { return bias_; }
  const QuantState4& quant_state() const { return state_; }
  const Tensor& absmax_f32() const { return absmax_f32_; }  // CPU cache of the 4-bit absmax
  const Tensor& scb() const { return scb_; }
  DType compute_dtype() const { return compute_dtype_; }
  float threshold() const { return threshold_; }
  const char* class_name() const { return traits().class_name; }
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

// outs[i] = ls[i]->forward(x) for weights of one input x: 4-bit weights of one compute dtype
// go through ops::linear_4bit_group (one decode-GEMV launch for a decode step's q, k and v on
// CUDA); any other mix runs one forward a weight.
void forward_group(ExecContext& ctx, const Tensor& x, std::span<const Linear* const> ls,
                   std::span<const Tensor> outs);
// out = act(gate(x)) * up(x): one launch for 4-bit gate and up on CUDA (ops::linear_4bit_gated),
// else the two forwards into gate_out / up_out [M, F] and gated_activation. gate_out and up_out
// are scratch: what they hold afterwards depends on the path.
void forward_gated(ExecContext& ctx, const Tensor& x, const Linear& gate, const Linear& up, ops::Activation a,
                   const Tensor& gate_out, const Tensor& up_out, const Tensor& out);
// The same two with the input given as a residual sum and its RMSNorm (ops::RmsNormInput):
// one launch computing the norm too on CUDA for 4-bit weights, else x is formed first.
void forward_group(ExecContext& ctx, const ops::RmsNormInput& in, std::span<const Linear* const> ls,
                   std::span<const Tensor> outs);
void forward_gated(ExecContext& ctx, const ops::RmsNormInput& in, const Linear& gate, const Linear& up,
                   ops::Activation a, const Tensor& gate_out, const Tensor& up_out, const Tensor& out);

}  // namespace nibble::nn
