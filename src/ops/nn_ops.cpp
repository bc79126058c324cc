// Forward-pass ops: the shape/dtype checks (ShapeError naming the op) and the one
// (device, dtype) dispatch point of each op. Only host kernels exist so far; a CUDA tensor
// gets UnsupportedError naming the op and the pair.
#include "ops/nn_ops.h"

#include <algorithm>
#include <cmath>

#include "backends/cpu/linear_cpu.h"
#include "backends/cpu/nn_cpu.h"
#include "nibble/error.h"

namespace nibble::ops {

using detail::str;

namespace {

bool is_compute_float(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

// Host-only for now: every input must be on the CPU.
void require_cpu(const char* op, const Tensor& t) {
  if (t.defined() && !t.device().is_cpu())
    throw UnsupportedError(str(op, ": no kernel for (", t.device().str(), ", ", dtype_name(t.dtype()), ")"));
}

void require_f32(const char* op, const char* what, const Tensor& t) {
  if (!t.defined()) throw ShapeError(str(op, ": ", what, " is undefined"));
  if (t.dtype() != DType::F32) throw ShapeError(str(op, ": ", what, " must be f32, got ", t.str()));
  require_cpu(op, t);
}

// A float vector of n elements (weights, biases); undefined allowed when optional.
void require_vector(const char* op, const char* what, const Tensor& t, int64_t n, bool optional) {
  if (!t.defined()) {
    if (optional) return;
    throw ShapeError(str(op, ": ", what, " is undefined"));
  }
  if (!is_compute_float(t.dtype()) || t.dim() != 1 || t.size(0) != n)
    throw ShapeError(str(op, ": ", what, " must be f32/f16/bf16 [", n, "], got ", t.str()));
  require_cpu(op, t);
}

void require_round_dtype(const char* op, DType t) {
  if (!is_compute_float(t))
    throw ShapeError(str(op, ": dtype must be f32, f16 or bf16, got ", dtype_name(t)));
}

// x [..., K] -> (M, K) and the output shape [..., N].
struct Rows {
  int64_t M, K;
  Shape out_shape;
};
Rows rows_of(const char* op, const Tensor& x, int64_t K, int64_t N) {
  if (x.dim() < 1 || x.size(-1) != K)
    throw ShapeError(str(op, ": input ", x.str(), " does not end in the weight's in_features ", K));
  Rows r{K ? x.numel() / K : 0, K, x.shape()};
  r.out_shape.back() = N;
  if (K == 0) {  // numel() is 0, rows are the product of the leading dims
    r.M = 1;
    for (int64_t d = 0; d + 1 < x.dim(); ++d) r.M *= x.size(d);
  }
  return r;
}

const void* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr() : nullptr;
}
DType dtype_or_f32(const Tensor& t) {
  return t.defined() ? t.dtype() : DType::F32;
}

}  // namespace

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, DType round_to) {
  const char* op = "linear";
  require_f32(op, "input", x_in);
  require_cpu(op, w_in);
  if (!w_in.defined() || w_in.dim() != 2 || !is_compute_float(w_in.dtype()))
    throw ShapeError(
        str(op, ": weight must be f32/f16/bf16 [N, K], got ", w_in.defined() ? w_in.str() : "undefined"));
  const int64_t N = w_in.size(0), K = w_in.size(1);
  require_vector(op, "bias", bias_in, N, true);
  require_round_dtype(op, round_to);
  Rows r = rows_of(op, x_in, K, N);
  Tensor x = x_in.contiguous(), w = w_in.contiguous(),
         bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor out = Tensor::empty(r.out_shape, DType::F32);
  cpu::linear(x.data<float>(), r.M, K, w.data_ptr(), w.dtype(), N, ptr_or_null(bias), dtype_or_f32(bias),
              round_to, out.data<float>());
  return out;
}

Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& bias,
                   DType compute_dtype) {
  require_cpu("linear_4bit", state.absmax);
  if (!state.absmax.defined()) throw ShapeError("linear_4bit: quant state has no absmax");
  return linear_4bit(x, packed, state, dequantize_absmax(state), bias, compute_dtype);
}

Tensor linear_4bit(const Tensor& x_in, const Tensor& packed_in, const QuantState4& state,
                   const Tensor& absmax_in, const Tensor& bias_in, DType compute_dtype) {
  const char* op = "linear_4bit";
  require_f32(op, "input", x_in);
  require_cpu(op, packed_in);
  if (state.shape.size() != 2)
    throw ShapeError(str(op, ": quant state shape must be [N, K], got ", shape_str(state.shape)));
  if (state.quant_type != DType::NF4 && state.quant_type != DType::FP4)
    throw ShapeError(str(op, ": quant type must be nf4 or fp4, got ", dtype_name(state.quant_type)));
  if (!valid_blocksize_4bit(state.blocksize))
    throw ShapeError(str(op, ": invalid blocksize ", state.blocksize));
  const int64_t N = state.shape[0], K = state.shape[1], n = state.numel();
  if (!packed_in.defined() || packed_in.dtype() != DType::U8 || packed_in.numel() != (n + 1) / 2)
    throw ShapeError(str(op, ": packed weight ", packed_in.defined() ? packed_in.str() : "undefined",
                         " does not hold ", n, " 4-bit values"));
  require_f32(op, "absmax", absmax_in);
  if (absmax_in.numel() != state.n_blocks())
    throw ShapeError(str(op, ": absmax ", absmax_in.str(), " does not have ", state.n_blocks(), " blocks"));
  require_vector(op, "bias", bias_in, N, true);
  require_round_dtype(op, compute_dtype);
  Rows r = rows_of(op, x_in, K, N);
  Tensor x = x_in.contiguous(), packed = packed_in.contiguous(), absmax = absmax_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor out = Tensor::empty(r.out_shape, DType::F32);
  cpu::linear_4bit(x.data<float>(), r.M, K, packed.data<uint8_t>(), absmax.data<float>(), state.blocksize,
                   state.quant_type, N, ptr_or_null(bias), dtype_or_f32(bias), compute_dtype,
                   out.data<float>());
  return out;
}

Tensor linear_int8(const Tensor& x_in, const Tensor& cb_in, const Tensor& scb_in, const Tensor& bias_in,
                   float threshold, DType act_dtype) {
  const char* op = "linear_int8";
  require_f32(op, "input", x_in);
  require_cpu(op, cb_in);
  if (!cb_in.defined() || cb_in.dtype() != DType::I8 || cb_in.dim() != 2)
    throw ShapeError(
        str(op, ": weight must be i8 [N, K], got ", cb_in.defined() ? cb_in.str() : "undefined"));
  const int64_t N = cb_in.size(0), K = cb_in.size(1);
  require_f32(op, "SCB", scb_in);
  if (scb_in.numel() != N) throw ShapeError(str(op, ": SCB ", scb_in.str(), " does not have ", N, " rows"));
  require_vector(op, "bias", bias_in, N, true);
  require_round_dtype(op, act_dtype);
  if (!(threshold >= 0.0f)) throw ShapeError(str(op, ": threshold must be non-negative, got ", threshold));
  Rows r = rows_of(op, x_in, K, N);
  Tensor x = x_in.contiguous(), cb = cb_in.contiguous(), scb = scb_in.contiguous();
  Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  Tensor out = Tensor::empty(r.out_shape, DType::F32);
  cpu::linear_int8(x.data<float>(), r.M, K, cb.data<int8_t>(), scb.data<float>(), N, ptr_or_null(bias),
                   dtype_or_f32(bias), threshold, act_dtype, out.data<float>());
  return out;
}

Tensor rms_norm(const Tensor& x_in, const Tensor& w_in, float eps, bool add_unit_offset) {
  const char* op = "rms_norm";
  require_f32(op, "input", x_in);
  if (x_in.dim() < 1) throw ShapeError(str(op, ": input must have a feature dimension, got ", x_in.str()));
  const int64_t C = x_in.size(-1), M = C ? x_in.numel() / C : 0;
  require_vector(op, "weight", w_in, C, false);
  Tensor x = x_in.contiguous(), w = w_in.contiguous();
  Tensor out = Tensor::empty(x.shape(), DType::F32);
  cpu::rms_norm(x.data<float>(), M, C, w.data_ptr(), w.dtype(), eps, add_unit_offset, out.data<float>());
  return out;
}

Tensor layer_norm(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, float eps) {
  const char* op = "layer_norm";
  require_f32(op, "input", x_in);
  if (x_in.dim() < 1) throw ShapeError(str(op, ": input must have a feature dimension, got ", x_in.str()));
  const int64_t C = x_in.size(-1), M = C ? x_in.numel() / C : 0;
  require_vector(op, "weight", w_in, C, false);
  require_vector(op, "bias", b_in, C, true);
  Tensor x = x_in.contiguous(), w = w_in.contiguous(), b = b_in.defined() ? b_in.contiguous() : Tensor();
  Tensor out = Tensor::empty(x.shape(), DType::F32);
  cpu::layer_norm(x.data<float>(), M, C, w.data_ptr(), w.dtype(), ptr_or_null(b), dtype_or_f32(b), eps,
                  out.data<float>());
  return out;
}

namespace {
cpu::Act to_cpu(Activation a) {
  switch (a) {
    case Activation::SiLU:
      return cpu::Act::SiLU;
    case Activation::GeluErf:
      return cpu::Act::GeluErf;
    case Activation::GeluTanh:
      return cpu::Act::GeluTanh;
    case Activation::ReLU:
      return cpu::Act::ReLU;
  }
  throw ShapeError("activation: unknown kind");
}
}  // namespace

void activate_(Tensor& x, Activation a) {
  require_f32("activate_", "input", x);
  if (!x.is_contiguous()) throw ShapeError(str("activate_: input must be contiguous, got ", x.str()));
  cpu::activate(x.data<float>(), x.numel(), to_cpu(a));
}

Tensor gated_activation(const Tensor& gate_in, const Tensor& up_in, Activation a) {
  const char* op = "gated_activation";
  require_f32(op, "gate", gate_in);
  require_f32(op, "up", up_in);
  if (gate_in.shape() != up_in.shape())
    throw ShapeError(str(op, ": gate ", gate_in.str(), " and up ", up_in.str(), " differ in shape"));
  Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  Tensor out = Tensor::empty(gate.shape(), DType::F32);
  cpu::gated_activation(gate.data<float>(), up.data<float>(), gate.numel(), to_cpu(a), out.data<float>());
  return out;
}

void apply_rope_(Tensor& x, const Tensor& cos_in, const Tensor& sin_in, int64_t rot_dim) {
  const char* op = "apply_rope_";
  require_f32(op, "input", x);
  require_f32(op, "cos", cos_in);
  require_f32(op, "sin", sin_in);
  if (x.dim() != 3 || !x.is_contiguous())
    throw ShapeError(str(op, ": input must be a contiguous [T, H, D], got ", x.str()));
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2);
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > D)
    throw ShapeError(str(op, ": rot_dim ", rot_dim, " must be even and in (0, ", D, "]"));
  const Shape cs{T, rot_dim / 2};
  if (cos_in.shape() != cs || sin_in.shape() != cs)
    throw ShapeError(
        str(op, ": cos/sin must be [", T, ", ", rot_dim / 2, "], got ", cos_in.str(), " and ", sin_in.str()));
  Tensor c = cos_in.contiguous(), s = sin_in.contiguous();
  cpu::apply_rope(x.data<float>(), T, H, D, c.data<float>(), s.data<float>(), rot_dim);
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionOptions& opts) {
  const char* op = "attention";
  require_f32(op, "q", q_in);
  require_f32(op, "k", k_in);
  require_f32(op, "v", v_in);
  if (q_in.dim() != 3 || k_in.dim() != 3 || v_in.dim() != 3)
    throw ShapeError(str(op, ": q, k, v must be [T, Hq, D], [S, Hkv, D], [S, Hkv, Dv]; got ", q_in.str(),
                         ", ", k_in.str(), ", ", v_in.str()));
  cpu::AttentionShape a;
  a.T = q_in.size(0);
  a.Hq = q_in.size(1);
  a.D = q_in.size(2);
  a.S = k_in.size(0);
  a.Hkv = k_in.size(1);
  a.Dv = v_in.size(2);
  if (k_in.size(2) != a.D || v_in.size(0) != a.S || v_in.size(1) != a.Hkv)
    throw ShapeError(str(op, ": k ", k_in.str(), " / v ", v_in.str(), " do not fit q ", q_in.str()));
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0)
    throw ShapeError(str(op, ": query heads ", a.Hq, " are not a multiple of kv heads ", a.Hkv));
  if (opts.q_offset < 0) throw ShapeError(str(op, ": q_offset must be >= 0, got ", opts.q_offset));
  if (opts.sliding_window && *opts.sliding_window <= 0)
    throw ShapeError(str(op, ": sliding_window must be positive, got ", *opts.sliding_window));
  if (opts.softcap && !(*opts.softcap > 0.0f))
    throw ShapeError(str(op, ": softcap must be positive, got ", *opts.softcap));
  a.scale = opts.scale;
  a.q_offset = opts.q_offset;
  a.window = opts.sliding_window.value_or(0);
  a.softcap = opts.softcap.value_or(0.0f);
  a.alibi = opts.alibi_slopes;
  Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  Tensor out = Tensor::empty({a.T, a.Hq, a.Dv}, DType::F32);
  cpu::attention(q.data<float>(), k.data<float>(), v.data<float>(), a, out.data<float>());
  return out;
}

double log_sum_exp(const float* row, int64_t n) {
  const double mx = *std::max_element(row, row + n);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(double(row[j]) - mx);
  return mx + std::log(sum);
}

}  // namespace nibble::ops
