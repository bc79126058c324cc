// Forward-pass ops: the shape/dtype checks (ShapeError naming the op) and the one
// (device, dtype) dispatch point of each op (ops/dispatch.h), into the CPU backend
// (backends/cpu) or the CUDA backend (backends/cuda). The allocating forms make their output on
// the inputs' device and call the context forms with that device's current context.
#include "ops/nn_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "backends/cpu/linear_cpu.h"
#include "backends/cpu/nn_cpu.h"
#include "nibble/error.h"
#include "ops/dispatch.h"
#include "ops/quant4_view.h"
// CUDA-free declarations; only the CUDA build instantiates the branches that call them.
#include "backends/cuda/gemm_cublas.h"
#include "backends/cuda/gemv_lut.h"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/nn_cuda.h"
#include "backends/cuda/quant_cuda.h"

namespace nibble::ops {

using detail::str;

namespace {

bool is_compute_float(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

void require_f32(const char* op, const char* what, const Tensor& t) {
  if (!t.defined()) throw ShapeError(str(op, ": ", what, " is undefined"));
  if (t.dtype() != DType::F32) throw ShapeError(str(op, ": ", what, " must be f32, got ", t.str()));
}

// A float vector of n elements (weights, biases); undefined allowed when optional.
void require_vector(const char* op, const char* what, const Tensor& t, int64_t n, bool optional) {
  if (!t.defined()) {
    if (optional) return;
    throw ShapeError(str(op, ": ", what, " is undefined"));
  }
  if (!is_compute_float(t.dtype()) || t.dim() != 1 || t.size(0) != n)
    throw ShapeError(str(op, ": ", what, " must be f32/f16/bf16 [", n, "], got ", t.str()));
  if (!t.is_contiguous()) throw ShapeError(str(op, ": ", what, " must be contiguous, got ", t.str()));
}

void require_round_dtype(const char* op, DType t) {
  if (!is_compute_float(t)) throw ShapeError(str(op, ": dtype must be f32, f16 or bf16, got ", dtype_name(t)));
}

// A [rows, cols] matrix view with unit column stride: its row stride (ld).
struct Mat {
  int64_t rows = 0, cols = 0, ld = 0;
};
Mat mat_of(const char* op, const char* what, const Tensor& t) {
  if (!t.defined()) throw ShapeError(str(op, ": ", what, " is undefined"));
  if (t.dim() != 2) throw ShapeError(str(op, ": ", what, " must be 2-D, got ", t.str()));
  if (t.size(1) > 1 && t.strides()[1] != 1)
    throw ShapeError(str(op, ": ", what, " must have unit column stride, got ", t.str()));
  return {t.size(0), t.size(1), t.size(0) > 1 ? t.strides()[0] : t.size(1)};
}
// The output of an op: contiguous f32 of exactly `shape`.
void require_out(const char* op, const Tensor& out, const Shape& shape) {
  if (!out.defined() || out.dtype() != DType::F32 || out.shape() != shape || !out.is_contiguous())
    throw ShapeError(str(op, ": output must be a contiguous f32 ", shape_str(shape), ", got ",
                         out.defined() ? out.str() : "undefined"));
}

// x [..., K] as a 2-D [M, K] view (contiguous inputs of any rank, or 2-D strided rows).
Tensor as_rows(const char* op, const Tensor& x, int64_t K) {
  if (x.dim() < 1 || x.size(-1) != K)
    throw ShapeError(str(op, ": input ", x.str(), " does not end in the weight's in_features ", K));
  if (x.dim() == 2) return x;
  if (!x.is_contiguous()) throw ShapeError(str(op, ": input ", x.str(), " must be contiguous"));
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  return x.view({M, K});
}
// The output of an allocating linear form: f32 x.shape()[:-1] + [N] on x's device, and its
// [M, N] view.
struct RowsOut {
  Tensor out, view;
};
RowsOut rows_out(const char* op, const Tensor& x, int64_t N) {
  require_f32(op, "input", x);
  if (x.dim() < 1) throw ShapeError(str(op, ": input must have a feature dimension, got ", x.str()));
  Shape s = x.shape();
  s.back() = N;
  int64_t M = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) M *= x.size(d);
  Tensor out = Tensor::empty(s, DType::F32, x.device());
  return {out, out.view({M, N})};
}

const void* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr() : nullptr;
}
DType dtype_or_f32(const Tensor& t) {
  return t.defined() ? t.dtype() : DType::F32;
}
// Host kernels take contiguous rows.
Tensor host_rows(const Tensor& x) {
  return x.is_contiguous() ? x : x.contiguous();
}

[[maybe_unused]] cuda::Act to_cuda(Activation a) {
  return static_cast<cuda::Act>(static_cast<int>(a));
}
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

// ---- linear ---------------------------------------------------------------------------------

void linear(ExecContext& ctx, const Tensor& x_in, const Tensor& w, const Tensor& bias, DType round_to,
            const Tensor& out) {
  const char* op = "linear";
  require_f32(op, "input", x_in);
  if (!w.defined() || w.dim() != 2 || !is_compute_float(w.dtype()) || !w.is_contiguous())
    throw ShapeError(
        str(op, ": weight must be a contiguous f32/f16/bf16 [N, K], got ", w.defined() ? w.str() : "undefined"));
  const int64_t N = w.size(0), K = w.size(1);
  require_vector(op, "bias", bias, N, true);
  require_round_dtype(op, round_to);
  Tensor x = as_rows(op, x_in, K);
  Mat xm = mat_of(op, "input", x);
  require_out(op, out, {xm.rows, N});
  dispatch(
      op, ctx, w.dtype(), {x, w, bias, out},
      [&] {
        Tensor xc = host_rows(x);
        cpu::linear(xc.data<float>(), xm.rows, K, w.data_ptr(), w.dtype(), N, ptr_or_null(bias), dtype_or_f32(bias),
                    round_to, out.data<float>());
      },
      [&](auto& c) {
        Tensor xc = xm.ld == K ? x : x.contiguous();
        cuda::linear(make_launch(c, cuda::linear_workspace_bytes(xm.rows, K, N, w.dtype(), round_to)),
                     xc.template data<float>(), xm.rows, K, w.data_ptr(), w.dtype(), N, ptr_or_null(bias),
                     dtype_or_f32(bias), round_to, out.template data<float>());
      });
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, DType round_to) {
  if (!w.defined() || w.dim() != 2)
    throw ShapeError(str("linear: weight must be f32/f16/bf16 [N, K], got ", w.defined() ? w.str() : "undefined"));
  RowsOut r = rows_out("linear", x, w.size(0));
  linear(ExecContext::current(x.device()), x, w, bias, round_to, r.view);
  return r.out;
}

namespace {
void check_4bit(const char* op, const Tensor& packed, const QuantState4& state) {
  if (state.shape.size() != 2)
    throw ShapeError(str(op, ": quant state shape must be [N, K], got ", shape_str(state.shape)));
  if (state.quant_type != DType::NF4 && state.quant_type != DType::FP4)
    throw ShapeError(str(op, ": quant type must be nf4 or fp4, got ", dtype_name(state.quant_type)));
  if (!valid_blocksize_4bit(state.blocksize)) throw ShapeError(str(op, ": invalid blocksize ", state.blocksize));
  const int64_t n = state.numel();
  if (!packed.defined() || packed.dtype() != DType::U8 || packed.numel() != (n + 1) / 2 || !packed.is_contiguous())
    throw ShapeError(str(op, ": packed weight ", packed.defined() ? packed.str() : "undefined", " does not hold ", n,
                         " 4-bit values"));
}
}  // namespace

void linear_4bit(ExecContext& ctx, const Tensor& x_in, const Tensor& packed, const QuantState4& state,
                 const Tensor& absmax_f32, const Tensor& bias, DType compute_dtype, const Tensor& out) {
  const char* op = "linear_4bit";
  require_f32(op, "input", x_in);
  check_4bit(op, packed, state);
  const int64_t N = state.shape[0], K = state.shape[1];
  require_vector(op, "bias", bias, N, true);
  require_round_dtype(op, compute_dtype);
  Tensor x = as_rows(op, x_in, K);
  Mat xm = mat_of(op, "input", x);
  require_out(op, out, {xm.rows, N});
  dispatch(
      op, ctx, state.quant_type, {x, packed, bias, out, state.absmax},
      [&] {
        require_f32(op, "absmax", absmax_f32);
        if (absmax_f32.numel() != state.n_blocks())
          throw ShapeError(str(op, ": absmax ", absmax_f32.str(), " does not have ", state.n_blocks(), " blocks"));
        Tensor xc = host_rows(x);
        // Double-quantized absmax: the decode GEMV reads the bytes (bitsandbytes' layout) instead.
        cpu::Absmax4 nested;
        const bool use_nested = state.nested && state.nested_blocksize == 256 && state.absmax.dtype() == DType::U8 &&
                                state.absmax.is_contiguous() && state.nested_absmax.defined() &&
                                state.nested_absmax.dtype() == DType::F32 && state.nested_absmax.is_contiguous();
        if (use_nested)
          nested = {.q = state.absmax.data<uint8_t>(),
                    .absmax2 = state.nested_absmax.data<float>(),
                    .code = dynamic_map_signed().data(),
                    .offset = state.offset};
        cpu::linear_4bit(xc.data<float>(), xm.rows, K, packed.data<uint8_t>(), absmax_f32.data<float>(),
                         state.blocksize, state.quant_type, N, ptr_or_null(bias), dtype_or_f32(bias), compute_dtype,
                         out.data<float>(), use_nested ? &nested : nullptr);
      },
      [&](auto& c) {
        const cuda::Quant4Weight w = quant4_weight(packed, state);
        Tensor xc = xm.ld == K ? x : x.contiguous();
        cuda::linear_4bit(make_launch(c, cuda::linear_4bit_workspace_bytes(xm.rows, K, N, compute_dtype)),
                          xc.template data<float>(), xm.rows, K, w, N, ptr_or_null(bias), dtype_or_f32(bias),
                          compute_dtype, out.template data<float>());
      });
}

#ifdef NIBBLE_WITH_CUDA
namespace {
// ws as CUDA targets when every weight is on CUDA with x's K and a contiguous f32 output
// (empty otherwise: the caller runs one linear_4bit a weight).
std::vector<cuda::Gemv4Target> cuda_targets(const char* op, const Tensor& x, std::span<const Linear4Ref> ws,
                                            std::vector<cuda::Quant4Weight>& qs) {
  std::vector<cuda::Gemv4Target> ts;
  if (!x.device().is_cuda() || x.dim() != 2 || !x.is_contiguous()) return ts;
  const int64_t M = x.size(0), K = x.size(1);
  qs.clear();
  qs.reserve(ws.size());
  for (const Linear4Ref& w : ws) {
    check_4bit(op, w.packed, w.state);
    const int64_t N = w.state.shape[0];
    require_vector(op, "bias", w.bias, N, true);
    if (w.state.shape[1] != K || w.out.shape() != Shape{M, N} || !w.out.is_contiguous() ||
        w.out.dtype() != DType::F32 || w.packed.device() != x.device() || w.out.device() != x.device())
      return {};
    qs.push_back(quant4_weight(w.packed, w.state));
  }
  for (size_t i = 0; i < ws.size(); ++i)
    ts.push_back({&qs[i], ws[i].state.shape[0], ptr_or_null(ws[i].bias),
                  cuda::bias_dtype_code(op, ptr_or_null(ws[i].bias), dtype_or_f32(ws[i].bias)), ws[i].out.data<float>()});
  return ts;
}

// The decode GEMV's targets: cuda_targets when the fused path takes them, else empty.
std::vector<cuda::Gemv4Target> gemv_targets(const char* op, const Tensor& x, std::span<const Linear4Ref> ws,
                                            std::vector<cuda::Quant4Weight>& qs, DType ct) {
  std::vector<cuda::Gemv4Target> ts = cuda_targets(op, x, ws, qs);
  if (!ts.empty() && !cuda::gemv_lut_4bit_group_ok(x.size(0), x.size(1), ts, ct, x.data<float>())) ts.clear();
  return ts;
}

// The prefill path's launch for ts (x rounded once for all of them) with its workspace, or
// nullopt when the cuBLAS path does not take the shape.
std::optional<cuda::Launch> gemm_launch(ExecContext& ctx, const Tensor& x, std::span<const cuda::Gemv4Target> ts,
                                        DType ct) {
  int64_t n_max = 0;
  for (const cuda::Gemv4Target& t : ts) n_max = std::max(n_max, t.N);
  const size_t bytes = cuda::gemm_4bit_workspace_bytes(x.size(0), x.size(1), n_max, ct);
  if (ts.empty() || bytes == 0) return std::nullopt;
  return make_launch(ctx, bytes);
}

// The fused norm's arguments when the decode GEMV can stage x = rms_norm(h + r) (nullopt: the
// caller forms x first).
std::optional<cuda::Gemv4Rms> gemv_rms(const char* op, const RmsNormInput& in) {
  const Tensor& h = in.h;
  if (h.dim() != 2 || !h.is_contiguous() || h.dtype() != DType::F32 || !in.r.defined() ||
      in.r.shape() != h.shape() || !in.r.is_contiguous() || in.r.dtype() != DType::F32 ||
      in.r.device() != h.device() || in.h_out.shape() != h.shape() || !in.h_out.is_contiguous() ||
      in.h_out.dtype() != DType::F32 || in.h_out.device() != h.device() ||
      in.h_out.data_ptr() == h.data_ptr() || in.w.dim() != 1 || in.w.numel() != h.size(1) ||
      !in.w.is_contiguous() || in.w.device() != h.device() || !is_float(in.w.dtype()) ||
      !cuda::gemv_lut_4bit_rms_ok(h.size(0), h.size(1)))
    return std::nullopt;
  return cuda::Gemv4Rms{in.h.data<float>(),
                        in.r.data<float>(),
                        in.w.data_ptr(),
                        cuda::bias_dtype_code(op, in.w.data_ptr(), in.w.dtype()),
                        in.eps,
                        in.add_unit_offset ? 1.0f : 0.0f,
                        in.h_out.data<float>()};
}

// One decode-GEMV launch for the group (x, or with rms the norm's input h) when it takes it.
bool try_gemv_group(const char* op, ExecContext& ctx, const Tensor& x, std::span<const Linear4Ref> ws,
                    DType ct, const cuda::Gemv4Rms* rms = nullptr) {
  if (!ctx.device().is_cuda() || x.device() != ctx.device()) return false;
  std::vector<cuda::Quant4Weight> qs;
  const auto ts = gemv_targets(op, x, ws, qs, ct);
  if (ts.empty()) return false;
  cuda::gemv_lut_4bit_group(make_launch(ctx, 0), rms ? nullptr : x.data<float>(), x.size(0), x.size(1), ts,
                            ct, rms);
  return true;
}

// The same group through the prefill path: x rounded once, each weight's GEMM through cuBLAS.
bool try_gemm_group(const char* op, ExecContext& ctx, const Tensor& x, std::span<const Linear4Ref> ws, DType ct) {
  if (ws.size() < 2 || !ctx.device().is_cuda() || x.device() != ctx.device()) return false;
  std::vector<cuda::Quant4Weight> qs;
  const auto ts = cuda_targets(op, x, ws, qs);
  const auto l = gemm_launch(ctx, x, ts, ct);
  return l && cuda::gemm_4bit_group(*l, x.data<float>(), x.size(0), x.size(1), ts, ct);
}

bool gated_out_ok(const Tensor& x, const Linear4Ref& gate, const Linear4Ref& up, const Tensor& out) {
  return gate.state.shape[0] == up.state.shape[0] && out.defined() && out.device() == x.device() &&
         out.dtype() == DType::F32 && out.is_contiguous() && out.shape() == gate.out.shape();
}

bool try_gemv_gated(const char* op, ExecContext& ctx, const Tensor& x, const Linear4Ref& gate,
                    const Linear4Ref& up, Activation a, DType ct, const Tensor& out,
                    const cuda::Gemv4Rms* rms = nullptr) {
  if (!ctx.device().is_cuda() || x.device() != ctx.device() || !gated_out_ok(x, gate, up, out)) return false;
  std::vector<cuda::Quant4Weight> qs;
  const Linear4Ref pair[] = {gate, up};
  const auto ts = gemv_targets(op, x, pair, qs, ct);
  if (ts.empty()) return false;
  cuda::gemv_lut_4bit_gated(make_launch(ctx, 0), rms ? nullptr : x.data<float>(), x.size(0), x.size(1), ts[0],
                            ts[1], to_cuda(a), ct, out.data<float>(), rms);
  return true;
}

// The prefill form: both GEMMs' f32 sums into gate.out and up.out, then one pass for both
// epilogues and the activation.
bool try_gemm_gated(const char* op, ExecContext& ctx, const Tensor& x, const Linear4Ref& gate, const Linear4Ref& up,
                    Activation a, DType ct, const Tensor& out) {
  if (!ctx.device().is_cuda() || x.device() != ctx.device() || !gated_out_ok(x, gate, up, out) ||
      gate.out.data_ptr() == up.out.data_ptr())
    return false;
  std::vector<cuda::Quant4Weight> qs;
  const Linear4Ref pair[] = {gate, up};
  const auto ts = cuda_targets(op, x, pair, qs);
  const auto l = gemm_launch(ctx, x, ts, ct);
  return l && cuda::gemm_4bit_gated(*l, x.data<float>(), x.size(0), x.size(1), ts[0], ts[1], to_cuda(a), ct,
                                    out.data<float>());
}
}  // namespace
#endif

void linear_4bit_group(ExecContext& ctx, const Tensor& x, std::span<const Linear4Ref> ws,
                       DType compute_dtype) {
#ifdef NIBBLE_WITH_CUDA
  if (try_gemv_group("linear_4bit_group", ctx, x, ws, compute_dtype) ||
      try_gemm_group("linear_4bit_group", ctx, x, ws, compute_dtype))
    return;
#endif
  for (const Linear4Ref& w : ws) linear_4bit(ctx, x, w.packed, w.state, w.absmax_f32, w.bias, compute_dtype, w.out);
}

void linear_4bit_gated(ExecContext& ctx, const Tensor& x, const Linear4Ref& gate, const Linear4Ref& up,
                       Activation a, DType compute_dtype, const Tensor& out) {
#ifdef NIBBLE_WITH_CUDA
  if (try_gemv_gated("linear_4bit_gated", ctx, x, gate, up, a, compute_dtype, out) ||
      try_gemm_gated("linear_4bit_gated", ctx, x, gate, up, a, compute_dtype, out))
    return;
#endif
  linear_4bit(ctx, x, gate.packed, gate.state, gate.absmax_f32, gate.bias, compute_dtype, gate.out);
  linear_4bit(ctx, x, up.packed, up.state, up.absmax_f32, up.bias, compute_dtype, up.out);
  gated_activation(ctx, gate.out, up.out, a, out);
}

Tensor rms_norm_input(ExecContext& ctx, const RmsNormInput& in) {
  copy_(ctx, in.h, in.h_out);
  Tensor x = Tensor::empty(in.h.shape(), DType::F32, in.h.device());
  add_rms_norm_(ctx, in.h_out, in.r, in.w, in.eps, in.add_unit_offset, x);
  return x;
}

bool rms_norm_input_fuses(const ExecContext& ctx, int64_t M, int64_t C) {
#ifdef NIBBLE_WITH_CUDA
  return ctx.device().is_cuda() && cuda::gemv_lut_4bit_rms_ok(M, C);
#else
  (void)ctx, (void)M, (void)C;
  return false;
#endif
}

void linear_4bit_group(ExecContext& ctx, const RmsNormInput& in, std::span<const Linear4Ref> ws,
                       DType compute_dtype) {
#ifdef NIBBLE_WITH_CUDA
  const char* op = "linear_4bit_group";
  if (const auto rms = gemv_rms(op, in); rms && try_gemv_group(op, ctx, in.h, ws, compute_dtype, &*rms))
    return;
#endif
  linear_4bit_group(ctx, rms_norm_input(ctx, in), ws, compute_dtype);
}

void linear_4bit_gated(ExecContext& ctx, const RmsNormInput& in, const Linear4Ref& gate, const Linear4Ref& up,
                       Activation a, DType compute_dtype, const Tensor& out) {
#ifdef NIBBLE_WITH_CUDA
  const char* op = "linear_4bit_gated";
  if (const auto rms = gemv_rms(op, in);
      rms && try_gemv_gated(op, ctx, in.h, gate, up, a, compute_dtype, out, &*rms))
    return;
#endif
  linear_4bit_gated(ctx, rms_norm_input(ctx, in), gate, up, a, compute_dtype, out);
}

Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& bias,
                   DType compute_dtype) {
  if (!state.absmax.defined()) throw ShapeError("linear_4bit: quant state has no absmax");
  return linear_4bit(x, packed, state, state.absmax.device().is_cpu() ? dequantize_absmax(state) : Tensor(), bias,
                     compute_dtype);
}

Tensor linear_4bit(const Tensor& x, const Tensor& packed, const QuantState4& state, const Tensor& absmax_f32,
                   const Tensor& bias, DType compute_dtype) {
  check_4bit("linear_4bit", packed, state);
  RowsOut r = rows_out("linear_4bit", x, state.shape[0]);
  linear_4bit(ExecContext::current(x.device()), x, packed, state, absmax_f32, bias, compute_dtype, r.view);
  return r.out;
}

void linear_int8(ExecContext& ctx, const Tensor& x_in, const Tensor& cb, const Tensor& scb, const Tensor& bias,
                 float threshold, DType act_dtype, const Tensor& out) {
  const char* op = "linear_int8";
  require_f32(op, "input", x_in);
  if (!cb.defined() || cb.dtype() != DType::I8 || cb.dim() != 2 || !cb.is_contiguous())
    throw ShapeError(str(op, ": weight must be a contiguous i8 [N, K], got ", cb.defined() ? cb.str() : "undefined"));
  const int64_t N = cb.size(0), K = cb.size(1);
  require_f32(op, "SCB", scb);
  if (scb.numel() != N || !scb.is_contiguous())
    throw ShapeError(str(op, ": SCB ", scb.str(), " does not have ", N, " rows"));
  require_vector(op, "bias", bias, N, true);
  require_round_dtype(op, act_dtype);
  if (!(threshold >= 0.0f)) throw ShapeError(str(op, ": threshold must be non-negative, got ", threshold));
  Tensor x = as_rows(op, x_in, K);
  Mat xm = mat_of(op, "input", x);
  require_out(op, out, {xm.rows, N});
  dispatch(
      op, ctx, DType::I8, {x, cb, scb, bias, out},
      [&] {
        Tensor xc = host_rows(x);
        cpu::linear_int8(xc.data<float>(), xm.rows, K, cb.data<int8_t>(), scb.data<float>(), N, ptr_or_null(bias),
                         dtype_or_f32(bias), threshold, act_dtype, out.data<float>());
      },
      [&](auto& c) {
        Tensor xc = xm.ld == K ? x : x.contiguous();
        cuda::linear_int8(make_launch(c, cuda::linear_int8_workspace_bytes(xm.rows, K, N)), xc.template data<float>(),
                          xm.rows, K, cb.data<int8_t>(), scb.data<float>(), N, ptr_or_null(bias), dtype_or_f32(bias),
                          threshold, act_dtype, out.template data<float>());
      });
}

Tensor linear_int8(const Tensor& x, const Tensor& cb, const Tensor& scb, const Tensor& bias, float threshold,
                   DType act_dtype) {
  if (!cb.defined() || cb.dim() != 2)
    throw ShapeError(str("linear_int8: weight must be a contiguous i8 [N, K], got ", cb.defined() ? cb.str() : "undefined"));
  RowsOut r = rows_out("linear_int8", x, cb.size(0));
  linear_int8(ExecContext::current(x.device()), x, cb, scb, bias, threshold, act_dtype, r.view);
  return r.out;
}

// ---- norms ------------------------------------------------------------------------------------

namespace {
// x [..., C] contiguous -> (M, C)
std::pair<int64_t, int64_t> rows_cols(const char* op, const Tensor& x) {
  require_f32(op, "input", x);
  if (x.dim() < 1) throw ShapeError(str(op, ": input must have a feature dimension, got ", x.str()));
  if (!x.is_contiguous()) throw ShapeError(str(op, ": input must be contiguous, got ", x.str()));
  const int64_t C = x.size(-1);
  return {C ? x.numel() / C : 0, C};
}
}  // namespace

void rms_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, bool add_unit_offset, const Tensor& out) {
  const char* op = "rms_norm";
  const auto mc = rows_cols(op, x);  // no structured binding: clang 14 lambdas cannot capture one
  const int64_t M = std::get<0>(mc), C = std::get<1>(mc);
  require_vector(op, "weight", w, C, false);
  require_out(op, out, x.shape());
  dispatch(
      op, ctx, w.dtype(), {x, w, out},
      [&] {
        cpu::rms_norm(x.data<float>(), M, C, w.data_ptr(), w.dtype(), eps, add_unit_offset, out.data<float>());
      },
      [&](auto& c) {
        cuda::rms_norm(make_launch(c, 0), x.template data<float>(), M, C, w.data_ptr(), w.dtype(), eps,
                       add_unit_offset, out.template data<float>());
      });
}

void add_rms_norm_(ExecContext& ctx, const Tensor& h, const Tensor& r, const Tensor& w, float eps,
                   bool add_unit_offset, const Tensor& out) {
  const char* op = "add_rms_norm_";
  const auto mc = rows_cols(op, h);
  const int64_t M = std::get<0>(mc), C = std::get<1>(mc);
  require_f32(op, "residual", r);
  if (r.shape() != h.shape() || !h.is_contiguous() || !r.is_contiguous())
    throw ShapeError(str(op, ": ", h.str(), " and ", r.str(), " must be contiguous and of one shape"));
  require_vector(op, "weight", w, C, false);
  require_out(op, out, h.shape());
  dispatch(
      op, ctx, w.dtype(), {h, r, w, out},
      [&] {
        add_(ctx, h, r);
        rms_norm(ctx, h, w, eps, add_unit_offset, out);
      },
      [&](auto& c) {
        cuda::add_rms_norm(make_launch(c, 0), h.template data<float>(), r.template data<float>(), M, C, w.data_ptr(),
                           w.dtype(), eps, add_unit_offset, out.template data<float>());
      });
}

Tensor rms_norm(const Tensor& x, const Tensor& w, float eps, bool add_unit_offset) {
  Tensor xc = x.defined() ? x.contiguous() : x;
  Tensor out = Tensor::empty(xc.shape(), DType::F32, xc.device());
  rms_norm(ExecContext::current(xc.device()), xc, w, eps, add_unit_offset, out);
  return out;
}

void layer_norm(ExecContext& ctx, const Tensor& x, const Tensor& w, const Tensor& b, float eps, const Tensor& out) {
  const char* op = "layer_norm";
  const auto mc = rows_cols(op, x);  // no structured binding: clang 14 lambdas cannot capture one
  const int64_t M = std::get<0>(mc), C = std::get<1>(mc);
  require_vector(op, "weight", w, C, false);
  require_vector(op, "bias", b, C, true);
  require_out(op, out, x.shape());
  dispatch(
      op, ctx, w.dtype(), {x, w, b, out},
      [&] {
        cpu::layer_norm(x.data<float>(), M, C, w.data_ptr(), w.dtype(), ptr_or_null(b), dtype_or_f32(b), eps,
                        out.data<float>());
      },
      [&](auto& c) {
        cuda::layer_norm(make_launch(c, 0), x.template data<float>(), M, C, w.data_ptr(), w.dtype(), ptr_or_null(b),
                         dtype_or_f32(b), eps, out.template data<float>());
      });
}

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps) {
  Tensor xc = x.defined() ? x.contiguous() : x;
  Tensor out = Tensor::empty(xc.shape(), DType::F32, xc.device());
  layer_norm(ExecContext::current(xc.device()), xc, w, b, eps, out);
  return out;
}

// ---- activations --------------------------------------------------------------------------------

void activate_(ExecContext& ctx, const Tensor& x, Activation a) {
  const char* op = "activate_";
  require_f32(op, "input", x);
  if (!x.is_contiguous()) throw ShapeError(str(op, ": input must be contiguous, got ", x.str()));
  dispatch(
      op, ctx, x.dtype(), {x}, [&] { cpu::activate(x.data<float>(), x.numel(), to_cpu(a)); },
      [&](auto& c) { cuda::activate(make_launch(c, 0), x.template data<float>(), x.numel(), to_cuda(a)); });
}

void activate_(Tensor& x, Activation a) {
  require_f32("activate_", "input", x);
  activate_(ExecContext::current(x.device()), x, a);
}

void gated_activation(ExecContext& ctx, const Tensor& gate, const Tensor& up, Activation a, const Tensor& out) {
  const char* op = "gated_activation";
  require_f32(op, "gate", gate);
  require_f32(op, "up", up);
  if (gate.shape() != up.shape())
    throw ShapeError(str(op, ": gate ", gate.str(), " and up ", up.str(), " differ in shape"));
  Tensor g2 = gate.dim() == 2 ? gate : gate.contiguous().view({-1, gate.size(-1)});
  Tensor u2 = up.dim() == 2 ? up : up.contiguous().view({-1, up.size(-1)});
  Mat gm = mat_of(op, "gate", g2), um = mat_of(op, "up", u2);
  require_out(op, out, {gm.rows, gm.cols});
  dispatch(
      op, ctx, gate.dtype(), {gate, up, out},
      [&] {
        Tensor gc = host_rows(g2), uc = host_rows(u2);
        cpu::gated_activation(gc.data<float>(), uc.data<float>(), gc.numel(), to_cpu(a), out.data<float>());
      },
      [&](auto& c) {
        cuda::gated_activation(make_launch(c, 0), g2.template data<float>(), gm.ld, u2.template data<float>(), um.ld,
                               gm.rows, gm.cols, to_cuda(a), out.template data<float>());
      });
}

Tensor gated_activation(const Tensor& gate, const Tensor& up, Activation a) {
  require_f32("gated_activation", "gate", gate);
  Tensor out = Tensor::empty(gate.shape(), DType::F32, gate.device());
  gated_activation(ExecContext::current(gate.device()), gate, up, a,
                   out.view({-1, std::max<int64_t>(gate.size(-1), 1)}));
  return out;
}

// ---- rotary embedding ---------------------------------------------------------------------------

void apply_rope_(ExecContext& ctx, const Tensor& x, const Tensor& cos_in, const Tensor& sin_in, int64_t rot_dim) {
  const char* op = "apply_rope_";
  require_f32(op, "input", x);
  require_f32(op, "cos", cos_in);
  require_f32(op, "sin", sin_in);
  if (x.dim() != 3 || x.strides()[2] != 1 || x.strides()[1] != x.size(2))
    throw ShapeError(str(op, ": input must be [T, H, D] with contiguous heads, got ", x.str()));
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2);
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > D)
    throw ShapeError(str(op, ": rot_dim ", rot_dim, " must be even and in (0, ", D, "]"));
  const Shape cs{T, rot_dim / 2};
  if (cos_in.shape() != cs || sin_in.shape() != cs || !cos_in.is_contiguous() || !sin_in.is_contiguous())
    throw ShapeError(
        str(op, ": cos/sin must be contiguous [", T, ", ", rot_dim / 2, "], got ", cos_in.str(), " and ", sin_in.str()));
  const int64_t ld = T > 1 ? x.strides()[0] : H * D;
  dispatch(
      op, ctx, x.dtype(), {x, cos_in, sin_in},
      [&] {
        if (ld == H * D) {
          cpu::apply_rope(x.data<float>(), T, H, D, cos_in.data<float>(), sin_in.data<float>(), rot_dim);
          return;
        }
        for (int64_t t = 0; t < T; ++t)  // strided tokens: one token at a time
          cpu::apply_rope(x.data<float>() + t * ld, 1, H, D, cos_in.data<float>() + t * (rot_dim / 2),
                          sin_in.data<float>() + t * (rot_dim / 2), rot_dim);
      },
      [&](auto& c) {
        cuda::apply_rope(make_launch(c, 0), x.template data<float>(), ld, T, H, D, cos_in.template data<float>(),
                         sin_in.template data<float>(), rot_dim);
      });
}

void apply_rope_(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t rot_dim) {
  require_f32("apply_rope_", "input", x);
  apply_rope_(ExecContext::current(x.device()), x, cos, sin, rot_dim);
}

// ---- attention ------------------------------------------------------------------------------------

namespace {
// Token stride of a [S, H, D] view with contiguous heads.
int64_t token_stride(const char* op, const char* what, const Tensor& t) {
  if (t.dim() != 3 || t.strides()[2] != 1 || t.strides()[1] != t.size(2))
    throw ShapeError(str(op, ": ", what, " must be [S, H, D] with contiguous heads, got ", t.str()));
  return t.size(0) > 1 ? t.strides()[0] : t.size(1) * t.size(2);
}
}  // namespace

namespace {

// A batched decode step's K/V table (i64 [2, T] on the context's device) and row0/q_pos (i64 [T]).
void check_kv_table(const char* op, ExecContext& ctx, const Tensor& table, const Tensor& pos, int64_t T) {
  if (table.dtype() != DType::I64 || table.numel() != 2 * T || !table.is_contiguous() ||
      table.device() != ctx.device())
    throw ShapeError(
        str(op, ": kv_table must be i64 [2, ", T, "] on ", ctx.device().str(), ", got ", table.str()));
  if (!pos.defined() || pos.dtype() != DType::I64 || pos.numel() != T || !pos.is_contiguous())
    throw ShapeError(
        str(op, ": a kv_table needs positions i64 [", T, "], got ", pos.defined() ? pos.str() : "undefined"));
}

// The host tensor shaped as `like` at a table address (the CPU form of a batched step).
Tensor view_at(int64_t addr, const Tensor& like) {
  auto st = std::make_shared<Storage>(reinterpret_cast<void*>(addr), like.nbytes(), like.device(), nullptr);
  return Tensor::from_storage(std::move(st), 0, like.shape(), like.dtype());
}

}  // namespace

bool attention(ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
               const AttentionOptions& opts, const Tensor& out, const Tensor& lse) {
  const char* op = "attention";
  require_f32(op, "q", q);
  if (!k.defined() || !v.defined() || k.dtype() != v.dtype() || !is_compute_float(k.dtype()))
    throw ShapeError(str(op, ": k and v must share one float dtype"));
  if (q.dim() != 3 || k.dim() != 3 || v.dim() != 3)
    throw ShapeError(str(op, ": q, k, v must be [T, Hq, D], [S, Hkv, D], [S, Hkv, Dv]; got ", q.str(), ", ", k.str(),
                         ", ", v.str()));
  cpu::AttentionShape a;
  a.T = q.size(0);
  a.Hq = q.size(1);
  a.D = q.size(2);
  a.S = k.size(0);
  a.Hkv = k.size(1);
  a.Dv = v.size(2);
  if (k.size(2) != a.D || v.size(0) != a.S || v.size(1) != a.Hkv)
    throw ShapeError(str(op, ": k ", k.str(), " / v ", v.str(), " do not fit q ", q.str()));
  if (a.Hkv <= 0 || a.Hq % a.Hkv != 0)
    throw ShapeError(str(op, ": query heads ", a.Hq, " are not a multiple of kv heads ", a.Hkv));
  if (opts.q_offset < 0) throw ShapeError(str(op, ": q_offset must be >= 0, got ", opts.q_offset));
  if (opts.sliding_window && *opts.sliding_window <= 0)
    throw ShapeError(str(op, ": sliding_window must be positive, got ", *opts.sliding_window));
  if (opts.softcap && !(*opts.softcap > 0.0f))
    throw ShapeError(str(op, ": softcap must be positive, got ", *opts.softcap));
  if (opts.alibi_slopes.defined() &&
      (opts.alibi_slopes.dtype() != DType::F32 || opts.alibi_slopes.numel() != a.Hq))
    throw ShapeError(str(op, ": alibi slopes must be f32 [", a.Hq, "], got ", opts.alibi_slopes.str()));
  require_out(op, out, {a.T, a.Hq, a.Dv});
  if (lse.defined()) require_out(op, lse, {a.T, a.Hq});
  if (opts.kv_table.defined()) {
    check_kv_table(op, ctx, opts.kv_table, opts.q_pos, a.T);
    if (ctx.device().is_cpu()) {  // one sequence at a time, each over keys [0, pos]
      const int64_t* tab = opts.kv_table.data<int64_t>();
      for (int64_t t = 0; t < a.T; ++t) {
        AttentionOptions o = opts;
        o.kv_table = Tensor();
        o.q_pos = Tensor();
        o.q_offset = opts.q_pos.data<int64_t>()[t];
        if (o.q_offset < 0 || o.q_offset >= a.S)
          throw ShapeError(
              str(op, ": q_pos[", t, "] = ", o.q_offset, " is outside the cache of ", a.S, " positions"));
        attention(ctx, q.slice(0, t, t + 1), view_at(tab[t], k).slice(0, 0, o.q_offset + 1),
                  view_at(tab[a.T + t], v).slice(0, 0, o.q_offset + 1), o, out.slice(0, t, t + 1));
      }
      return false;
    }
  } else if (opts.q_pos.defined()) {
    if (opts.q_pos.dtype() != DType::I64 || opts.q_pos.numel() != 1 || a.T != 1)
      throw ShapeError(str(op, ": q_pos must be i64 [1] with one query row, got ", opts.q_pos.str(), " and T=", a.T));
    if (ctx.device().is_cpu()) {  // the position is at hand: the plain form over keys [0, pos]
      AttentionOptions o = opts;
      o.q_pos = Tensor();
      o.q_offset = opts.q_pos.data<int64_t>()[0];
      if (o.q_offset < 0 || o.q_offset >= a.S)
        throw ShapeError(str(op, ": q_pos ", o.q_offset, " is outside the cache of ", a.S, " positions"));
      attention(ctx, q, k.slice(0, 0, o.q_offset + 1), v.slice(0, 0, o.q_offset + 1), o, out);
      return false;
    }
  }
  const int64_t ldq = token_stride(op, "q", q), ldk = token_stride(op, "k", k), ldv = token_stride(op, "v", v);
  a.scale = opts.scale;
  a.q_offset = opts.q_offset;
  a.window = opts.sliding_window.value_or(0);
  a.softcap = opts.softcap.value_or(0.0f);
  bool wrote_lse = false;
  dispatch(
      op, ctx, k.dtype(), {q, k, v, out, lse, opts.alibi_slopes, opts.q_pos, opts.kv_table},
      [&] {
        if (k.dtype() != DType::F32)
          throw UnsupportedError(str(op, ": no kernel for (cpu, ", dtype_name(k.dtype()), ") K/V"));
        Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
        a.alibi = opts.alibi_slopes.defined() ? opts.alibi_slopes.data<float>() : nullptr;
        cpu::attention(qc.data<float>(), kc.data<float>(), vc.data<float>(), a, out.data<float>());
      },
      [&](auto& c) {
        cuda::Attention g;
        g.T = a.T, g.S = a.S, g.Hq = a.Hq, g.Hkv = a.Hkv, g.D = a.D, g.Dv = a.Dv;
        g.scale = a.scale, g.q_offset = a.q_offset, g.window = a.window, g.softcap = a.softcap;
        g.alibi = opts.alibi_slopes.defined() ? opts.alibi_slopes.template data<float>() : nullptr;
        g.q = q.template data<float>(), g.ldq = ldq;
        g.k = k.data_ptr(), g.v = v.data_ptr(), g.kv_dtype = k.dtype(), g.ldk = ldk, g.ldv = ldv;
        g.out = out.template data<float>();
        g.pos = opts.q_pos.defined() ? opts.q_pos.template data<int64_t>() : nullptr;
        g.kv_table = opts.kv_table.defined() ? opts.kv_table.template data<int64_t>() : nullptr;
        g.lse = lse.defined() ? lse.template data<float>() : nullptr;
        wrote_lse = cuda::attention_writes_lse(g);
        cuda::attention(make_launch(c, cuda::attention_workspace_bytes(g)), g);
      });
  return wrote_lse;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opts) {
  require_f32("attention", "q", q);
  if (q.dim() != 3 || v.dim() != 3)
    throw ShapeError(str("attention: q, k, v must be [T, Hq, D], [S, Hkv, D], [S, Hkv, Dv]; got ", q.str(), ", ",
                         k.str(), ", ", v.str()));
  Tensor out = Tensor::empty({q.size(0), q.size(1), v.size(2)}, DType::F32, q.device());
  attention(ExecContext::current(q.device()), q, k, v, opts, out);
  return out;
}

// ---- elementwise and data movement ------------------------------------------------------------------

void add_(ExecContext& ctx, const Tensor& a, const Tensor& b) {
  const char* op = "add_";
  require_f32(op, "a", a);
  require_f32(op, "b", b);
  if (a.shape() != b.shape() || !a.is_contiguous() || !b.is_contiguous())
    throw ShapeError(str(op, ": ", a.str(), " and ", b.str(), " must be contiguous and of one shape"));
  dispatch(
      op, ctx, a.dtype(), {a, b},
      [&] {
        float* p = a.data<float>();
        const float* q = b.data<float>();
        for (int64_t i = 0; i < a.numel(); ++i) p[i] += q[i];
      },
      [&](auto& c) { cuda::add(make_launch(c, 0), a.template data<float>(), b.template data<float>(), a.numel()); });
}

void softcap_(ExecContext& ctx, const Tensor& x, float cap) {
  const char* op = "softcap_";
  require_f32(op, "input", x);
  if (!x.is_contiguous()) throw ShapeError(str(op, ": input must be contiguous, got ", x.str()));
  if (!(cap > 0.0f)) throw ShapeError(str(op, ": softcap must be positive, got ", cap));
  dispatch(
      op, ctx, x.dtype(), {x},
      [&] {
        float* p = x.data<float>();
        for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::tanh(p[i] / cap) * cap;
      },
      [&](auto& c) { cuda::softcap(make_launch(c, 0), x.template data<float>(), x.numel(), cap); });
}

void embedding(ExecContext& ctx, const Tensor& table, const Tensor& ids, int64_t offset, float scale,
               const Tensor& out) {
  const char* op = "embedding";
  if (!table.defined() || table.dim() != 2 || !is_float(table.dtype()) || !table.is_contiguous())
    throw ShapeError(str(op, ": table must be a contiguous float [V, C], got ", table.defined() ? table.str() : "undefined"));
  if (!ids.defined() || ids.dtype() != DType::I64 || ids.dim() != 1 || !ids.is_contiguous())
    throw ShapeError(str(op, ": ids must be i64 [R], got ", ids.defined() ? ids.str() : "undefined"));
  const int64_t V = table.size(0), C = table.size(1), R = ids.size(0);
  require_out(op, out, {R, C});
  dispatch(
      op, ctx, table.dtype(), {table, ids, out},
      [&] {
        for (int64_t t = 0; t < R; ++t) {
          const int64_t r = ids.data<int64_t>()[t] + offset;
          if (r < 0 || r >= V)
            throw ShapeError(str("index ", ids.data<int64_t>()[t], " is outside the embedding of ", V, " rows"));
          float* o = out.data<float>() + t * C;
          for (int64_t c = 0; c < C; ++c) o[c] = load_as_f32(table.data_ptr(), table.dtype(), r * C + c) * scale;
        }
      },
      [&](auto& c) {
        cuda::embedding(make_launch(c, 0), table.data_ptr(), table.dtype(), C, ids.template data<int64_t>(), R, offset,
                        scale, out.template data<float>());
      });
}

void copy_(ExecContext& ctx, const Tensor& src, const Tensor& dst) {
  const char* op = "copy_";
  if (!src.defined() || !is_compute_float(src.dtype()))
    throw ShapeError(str(op, ": source must be f32/f16/bf16, got ", src.defined() ? src.str() : "undefined"));
  if (!dst.defined() || !is_compute_float(dst.dtype()))
    throw ShapeError(str(op, ": destination must be f32/f16/bf16, got ", dst.defined() ? dst.str() : "undefined"));
  Mat s = mat_of(op, "source", src), d = mat_of(op, "destination", dst);
  if (s.rows != d.rows || s.cols != d.cols)
    throw ShapeError(str(op, ": source ", src.str(), " and destination ", dst.str(), " differ in shape"));
  dispatch(
      op, ctx, dst.dtype(), {src, dst},
      [&] {
        cpu::convert_rows(src.data_ptr(), src.dtype(), s.ld, s.rows, s.cols, dst.data_ptr(), dst.dtype(),
                          d.ld);
      },
      [&](auto& c) {
        cuda::copy_rows(make_launch(c, 0), src.data_ptr(), src.dtype(), s.ld, s.rows, s.cols, dst.data_ptr(),
                        dst.dtype(), d.ld);
      });
}

Tensor to_dtype(const Tensor& x, DType dt) {
  if (!x.defined() || x.dtype() == dt) return x;
  if (x.dim() != 2 || !x.device().is_cpu() || !is_compute_float(x.dtype()) || !is_compute_float(dt))
    return x.to(dt);
  Tensor out = Tensor::empty(x.shape(), dt);
  copy_(ExecContext::current(x.device()), x.contiguous(), out);
  return out;
}

void rope_kv_write_(ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos,
                    const Tensor& sin, int64_t rot_dim, const Tensor& kc, const Tensor& vc,
                    const Tensor& row0, int64_t p0, const Tensor& kv_table) {
  const char* op = "rope_kv_write_";
  const bool rotate = cos.defined();
  const int64_t T = q.size(0);
  if (kv_table.defined()) {
    check_kv_table(op, ctx, kv_table, row0, T);
    if (!ctx.device().is_cuda()) {  // one sequence at a time, as the single form does it
      if (rotate) apply_rope_(ctx, q, cos, sin, rot_dim), apply_rope_(ctx, k, cos, sin, rot_dim);
      const int64_t* tab = kv_table.data<int64_t>();
      for (int64_t t = 0; t < T; ++t) {
        copy_at_(ctx, k.slice(0, t, t + 1).view({1, -1}), view_at(tab[t], kc), row0.slice(0, t, t + 1));
        copy_at_(ctx, v.slice(0, t, t + 1), view_at(tab[T + t], vc), row0.slice(0, t, t + 1));
      }
      return;
    }
  }
  auto write = [&](const Tensor& src, const Tensor& dst) {
    if (row0.defined())
      copy_at_(ctx, src, dst, row0);
    else
      copy_(ctx, src, dst.slice(0, p0, p0 + T));
  };
  if (!ctx.device().is_cuda()) {
    if (rotate) apply_rope_(ctx, q, cos, sin, rot_dim), apply_rope_(ctx, k, cos, sin, rot_dim);
    write(k.view({T, -1}), kc);
    write(v, vc);
    return;
  }
  require_f32(op, "q", q);
  require_f32(op, "k", k);
  require_f32(op, "v", v);
  if (q.dim() != 3 || k.dim() != 3 || q.strides()[2] != 1 || q.strides()[1] != q.size(2) || !k.is_contiguous() ||
      k.size(0) != T || q.size(2) != k.size(2))
    throw ShapeError(str(op, ": q ", q.str(), " and k ", k.str(), " must be [T, H, D] with contiguous heads"));
  const int64_t Hkv = k.size(1), D = k.size(2);
  Mat vm = mat_of(op, "v", v), km = mat_of(op, "k cache", kc), vcm = mat_of(op, "v cache", vc);
  if (vm.rows != T || vm.cols != Hkv * D || km.cols != Hkv * D || vcm.cols != Hkv * D || km.ld != vcm.ld ||
      kc.dtype() != vc.dtype() || kc.size(0) != vc.size(0))
    throw ShapeError(str(op, ": v ", v.str(), " or the caches ", kc.str(), ", ", vc.str(), " do not match k ", k.str()));
  if (rotate) {
    if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > D || cos.shape() != Shape{T, rot_dim / 2} ||
        sin.shape() != cos.shape() || !cos.is_contiguous() || !sin.is_contiguous())
      throw ShapeError(str(op, ": rot_dim ", rot_dim, " or cos/sin ", cos.str(), " do not fit head size ", D));
  }
  if (row0.defined() && !kv_table.defined()) {  // (with a table, row0 was checked beside it)
    if (row0.dtype() != DType::I64 || row0.numel() != 1)
      throw ShapeError(str(op, ": row0 must be i64 [1], got ", row0.str()));
  } else if (!row0.defined() && (p0 < 0 || p0 + T > kc.size(0))) {
    throw ShapeError(str(op, ": rows [", p0, ", ", p0 + T, ") are outside ", kc.str()));
  }
  dispatch(
      op, ctx, kc.dtype(), {q, k, v, cos, sin, kc, vc, row0, kv_table}, [] {},
      [&](auto& c) {
        cuda::RopeKv a{};
        a.q = q.template data<float>(), a.ldq = T > 1 ? q.strides()[0] : q.size(1) * D;
        a.k = k.template data<float>(), a.ldk = Hkv * D;
        a.v = v.template data<float>(), a.ldv = vm.ld;
        a.T = T, a.Hq = q.size(1), a.Hkv = Hkv, a.D = D, a.rot_dim = rotate ? rot_dim : 0;
        a.cos = rotate ? cos.template data<float>() : nullptr;
        a.sin = rotate ? sin.template data<float>() : nullptr;
        a.kc = kc.data_ptr(), a.vc = vc.data_ptr(), a.ldc = km.ld;
        a.row0_dev = row0.defined() ? row0.template data<int64_t>() : nullptr;
        a.row0 = p0;
        a.table = kv_table.defined() ? kv_table.template data<int64_t>() : nullptr;
        cuda::rope_kv_write(make_launch(c, 0), a, kc.dtype());
      });
}

void copy_at_(ExecContext& ctx, const Tensor& src, const Tensor& dst, const Tensor& row0) {
  const char* op = "copy_at_";
  require_f32(op, "source", src);
  if (!row0.defined() || row0.dtype() != DType::I64 || row0.numel() != 1)
    throw ShapeError(str(op, ": row0 must be i64 [1], got ", row0.defined() ? row0.str() : "undefined"));
  if (!dst.defined() || !is_compute_float(dst.dtype()))
    throw ShapeError(str(op, ": destination must be f32/f16/bf16, got ", dst.defined() ? dst.str() : "undefined"));
  Mat s = mat_of(op, "source", src), d = mat_of(op, "destination", dst);
  if (s.cols != d.cols || s.rows > d.rows)
    throw ShapeError(str(op, ": source ", src.str(), " does not fit destination ", dst.str()));
  if (ctx.device().is_cpu()) {
    const int64_t r0 = row0.data<int64_t>()[0];
    if (r0 < 0 || r0 + s.rows > d.rows)
      throw ShapeError(str(op, ": rows [", r0, ", ", r0 + s.rows, ") are outside ", dst.str()));
    copy_(ctx, src, dst.slice(0, r0, r0 + s.rows));
    return;
  }
  dispatch(
      op, ctx, dst.dtype(), {src, dst, row0}, [] {},
      [&](auto& c) {
        cuda::copy_rows(make_launch(c, 0), src.template data<float>(), s.ld, s.rows, s.cols, dst.data_ptr(),
                        dst.dtype(), d.ld, row0.template data<int64_t>());
      });
}

void argmax_rows(ExecContext& ctx, const Tensor& x, const Tensor& out) {
  const char* op = "argmax_rows";
  require_f32(op, "input", x);
  Mat m = mat_of(op, "input", x);
  if (m.ld != m.cols) throw ShapeError(str(op, ": input must be contiguous, got ", x.str()));
  if (!out.defined() || out.dtype() != DType::I64 || out.numel() != m.rows || !out.is_contiguous())
    throw ShapeError(str(op, ": output must be i64 [", m.rows, "]"));
  if (m.cols == 0) throw ShapeError(str(op, ": rows are empty"));
  dispatch(
      op, ctx, x.dtype(), {x, out},
      [&] {
        for (int64_t r = 0; r < m.rows; ++r) {
          const float* row = x.data<float>() + r * m.cols;
          out.data<int64_t>()[r] = std::max_element(row, row + m.cols) - row;  // first maximum, as torch.argmax
        }
      },
      [&](auto& c) {
        cuda::argmax_rows(make_launch(c, 0), x.template data<float>(), m.rows, m.cols, out.template data<int64_t>());
      });
}

double log_sum_exp(const float* row, int64_t n) {
  const double mx = *std::max_element(row, row + n);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(double(row[j]) - mx);
  return mx + std::log(sum);
}

}  // namespace nibble::ops
