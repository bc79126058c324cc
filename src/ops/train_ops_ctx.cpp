// The context forms of the training backward ops (train_ops.h): shape/dtype checks (ShapeError
// naming the op and the tensor) and the one dispatch point of each op (ops/dispatch.h). The CPU
// branch calls the host reference function on the tensors' data, so CPU results are those of
// the reference bit for bit; the CUDA branch calls backends/cuda/train_cuda.h.
#include <cmath>
#include <cstring>
#include <vector>

#include "nibble/error.h"
#include "ops/dispatch.h"
#include "ops/nn_ops.h"
#include "ops/train_ops.h"
// CUDA-free declarations; only the CUDA build instantiates the branches that call them.
#include "backends/cuda/train_cuda.h"

namespace nibble::ops {

using detail::str;

namespace {

std::string str_of(const Tensor& t) {
  return t.defined() ? t.str() : "undefined";
}
// A contiguous f32 tensor of exactly `shape` (inputs and outputs alike).
void require_f32_shape(const char* op, const char* what, const Tensor& t, const Shape& shape) {
  if (!t.defined() || t.dtype() != DType::F32 || t.shape() != shape || !t.is_contiguous())
    throw ShapeError(
        str(op, ": ", what, " must be a contiguous f32 ", shape_str(shape), ", got ", str_of(t)));
}
// A contiguous f32 2-D [M, C]: returns {M, C}.
std::pair<int64_t, int64_t> require_rows(const char* op, const char* what, const Tensor& t) {
  if (!t.defined() || t.dtype() != DType::F32 || t.dim() != 2 || !t.is_contiguous())
    throw ShapeError(str(op, ": ", what, " must be a contiguous f32 [rows, cols], got ", str_of(t)));
  return {t.size(0), t.size(1)};
}
// A norm weight: contiguous f32/f16/bf16 [C].
void require_weight(const char* op, const char* what, const Tensor& w, int64_t C) {
  if (!w.defined() || w.dim() != 1 || w.size(0) != C || !w.is_contiguous() ||
      (w.dtype() != DType::F32 && w.dtype() != DType::F16 && w.dtype() != DType::BF16))
    throw ShapeError(str(op, ": ", what, " must be a contiguous f32/f16/bf16 [", C, "], got ", str_of(w)));
}
// A norm backward's tensors: x, dy, dx [M, C], weight [C], dw and db [C] or undefined: {M, C}.
std::pair<int64_t, int64_t> require_norm(const char* op, const Tensor& x, const Tensor& w, const Tensor& dy,
                                         const Tensor& dx, const Tensor& dw, const Tensor& db) {
  const auto mc = require_rows(op, "x", x);
  require_weight(op, "weight", w, mc.second);
  require_f32_shape(op, "dy", dy, x.shape());
  require_f32_shape(op, "dx", dx, x.shape());
  if (dw.defined()) require_f32_shape(op, "dw", dw, {mc.second});
  if (db.defined()) require_f32_shape(op, "db", db, {mc.second});
  return mc;
}
// The host reference takes f32 weights.
Tensor host_f32(const Tensor& w) {
  return w.dtype() == DType::F32 ? w : w.to(DType::F32);
}
float* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<float>() : nullptr;
}

Act to_ref(Activation a) {
  switch (a) {
    case Activation::SiLU:
      return Act::Silu;
    case Activation::GeluErf:
      return Act::GeluErf;
    case Activation::GeluTanh:
      return Act::GeluTanh;
    case Activation::ReLU:
      return Act::Relu;
  }
  throw ShapeError("activation: unknown kind");
}
[[maybe_unused]] cuda::Act to_cuda(Activation a) {
  return static_cast<cuda::Act>(static_cast<int>(a));
}

}  // namespace

void rms_norm_backward(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, bool add_unit_offset,
                       const Tensor& dy, const Tensor& dx, const Tensor& dw) {
  const char* op = "rms_norm_backward";
  const auto mc = require_norm(op, x, w, dy, dx, dw, Tensor());
  const int64_t M = mc.first, C = mc.second;
  const float offset = add_unit_offset ? 1.0f : 0.0f;
  dispatch(
      op, ctx, DType::F32, {x, w, dy, dx, dw},
      [&] {
        std::vector<float> scratch(dw.defined() ? 0 : size_t(C));  // the reference always accumulates dw
        rms_norm_backward(x.data<float>(), host_f32(w).data<float>(), M, C, eps, offset, dy.data<float>(),
                          dx.data<float>(), dw.defined() ? dw.data<float>() : scratch.data());
      },
      [&](auto& c) {
        cuda::rms_norm_backward(make_launch(c, 0), x.template data<float>(), M, C, w.data_ptr(), w.dtype(),
                                eps, offset, dy.template data<float>(), dx.template data<float>(),
                                ptr_or_null(dw));
      });
}

void layer_norm_backward(ExecContext& ctx, const Tensor& x, const Tensor& w, float eps, const Tensor& dy,
                         const Tensor& dx, const Tensor& dw, const Tensor& db) {
  const char* op = "layer_norm_backward";
  const auto mc = require_norm(op, x, w, dy, dx, dw, db);
  const int64_t M = mc.first, C = mc.second;
  dispatch(
      op, ctx, DType::F32, {x, w, dy, dx, dw, db},
      [&] {
        layer_norm_backward(x.data<float>(), host_f32(w).data<float>(), M, C, eps, dy.data<float>(),
                            dx.data<float>(), ptr_or_null(dw), ptr_or_null(db));
      },
      [&](auto& c) {
        cuda::layer_norm_backward(make_launch(c, 0), x.template data<float>(), M, C, w.data_ptr(), w.dtype(),
                                  eps, dy.template data<float>(), dx.template data<float>(), ptr_or_null(dw),
                                  ptr_or_null(db));
      });
}

void zero_(ExecContext& ctx, const Tensor& t) {
  const char* op = "zero_";
  if (!t.defined() || !t.is_contiguous())
    throw ShapeError(str(op, ": the tensor must be contiguous, got ", str_of(t)));
  dispatch(
      op, ctx, t.dtype(), {t}, [&] { std::memset(t.data_ptr(), 0, t.nbytes()); },
      [&](auto& c) { cuda::zero(make_launch(c, 0), t.data_ptr(), t.nbytes()); });
}

void act_backward(ExecContext& ctx, Activation a, const Tensor& x, const Tensor& dy, const Tensor& dx) {
  const char* op = "act_backward";
  if (!x.defined()) throw ShapeError(str(op, ": x is undefined"));
  require_f32_shape(op, "x", x, x.shape());
  require_f32_shape(op, "dy", dy, x.shape());
  require_f32_shape(op, "dx", dx, x.shape());
  dispatch(
      op, ctx, DType::F32, {x, dy, dx},
      [&] { act_backward(to_ref(a), x.data<float>(), dy.data<float>(), x.numel(), dx.data<float>()); },
      [&](auto& c) {
        cuda::act_backward(make_launch(c, 0), to_cuda(a), x.template data<float>(), dy.template data<float>(),
                           x.numel(), dx.template data<float>());
      });
}

void gated_act_backward(ExecContext& ctx, Activation a, const Tensor& gate, const Tensor& up,
                        const Tensor& dy, const Tensor& dgate, const Tensor& dup) {
  const char* op = "gated_act_backward";
  if (!gate.defined()) throw ShapeError(str(op, ": gate is undefined"));
  const Shape& s = gate.shape();
  require_f32_shape(op, "gate", gate, s);
  require_f32_shape(op, "up", up, s);
  require_f32_shape(op, "dy", dy, s);
  require_f32_shape(op, "dgate", dgate, s);
  require_f32_shape(op, "dup", dup, s);
  dispatch(
      op, ctx, DType::F32, {gate, up, dy, dgate, dup},
      [&] {
        gated_act_backward(to_ref(a), gate.data<float>(), up.data<float>(), dy.data<float>(), gate.numel(),
                           dgate.data<float>(), dup.data<float>());
      },
      [&](auto& c) {
        cuda::gated_act_backward(make_launch(c, 0), to_cuda(a), gate.template data<float>(),
                                 up.template data<float>(), dy.template data<float>(), gate.numel(),
                                 dgate.template data<float>(), dup.template data<float>());
      });
}

void softcap_backward_(ExecContext& ctx, const Tensor& y, float cap, const Tensor& dy) {
  const char* op = "softcap_backward_";
  if (!y.defined()) throw ShapeError(str(op, ": y is undefined"));
  require_f32_shape(op, "y", y, y.shape());
  require_f32_shape(op, "dy", dy, y.shape());
  if (!(cap > 0.0f)) throw ShapeError(str(op, ": softcap must be positive, got ", cap));
  dispatch(
      op, ctx, DType::F32, {y, dy},
      [&] { softcap_backward_(y.data<float>(), cap, y.numel(), dy.data<float>()); },
      [&](auto& c) {
        cuda::softcap_backward(make_launch(c, 0), y.template data<float>(), cap, y.numel(),
                               dy.template data<float>());
      });
}

void rope_backward_(ExecContext& ctx, const Tensor& dx, const Tensor& cos, const Tensor& sin,
                    int64_t rot_dim) {
  const char* op = "rope_backward_";
  if (!dx.defined() || dx.dim() != 3 || dx.dtype() != DType::F32 || !dx.is_contiguous())
    throw ShapeError(str(op, ": dx must be a contiguous f32 [T, H, D], got ", str_of(dx)));
  const int64_t T = dx.size(0), H = dx.size(1), D = dx.size(2);
  if (rot_dim < 0 || rot_dim % 2 || rot_dim > D)
    throw ShapeError(str(op, ": rot_dim ", rot_dim, " must be even and in [0, ", D, "]"));
  if (rot_dim == 0) return;  // nothing rotated
  require_f32_shape(op, "cos", cos, {T, rot_dim / 2});
  require_f32_shape(op, "sin", sin, {T, rot_dim / 2});
  dispatch(
      op, ctx, DType::F32, {dx, cos, sin},
      [&] { rope_backward_(dx.data<float>(), T, H, D, cos.data<float>(), sin.data<float>(), rot_dim); },
      [&](auto& c) {
        cuda::rope_backward(make_launch(c, 0), dx.template data<float>(), T, H, D, cos.template data<float>(),
                            sin.template data<float>(), rot_dim);
      });
}

void attention_backward(ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const AttentionOptions& opts, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                        const Tensor& dv, const Tensor& out, const Tensor& lse) {
  const char* op = "attention_backward";
  for (const auto& [what, t] : {std::pair<const char*, const Tensor*>{"q", &q}, {"k", &k}, {"v", &v}})
    if (!t->defined() || t->dim() != 3 || !t->is_contiguous() ||
        t->dtype() != (t == &q ? DType::F32 : k.dtype()) ||
        (t->dtype() != DType::F32 && t->dtype() != DType::F16 && t->dtype() != DType::BF16))
      throw ShapeError(str(op, ": ", what,
                           " must be a contiguous [T, heads, dim] (q f32; k and v f32, f16 or ",
                           "bf16, one dtype), got ", str_of(*t)));
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1), Dv = v.size(2);
  if (k.shape() != Shape{T, Hkv, D} || v.size(0) != T || v.size(1) != Hkv || Hkv == 0 || Hq % Hkv)
    throw ShapeError(str(op, ": q ", q.str(), ", k ", k.str(), ", v ", v.str(),
                         " do not match (one T, Hq a multiple of Hkv, k's head dim q's)"));
  require_f32_shape(op, "dout", dout, {T, Hq, Dv});
  require_f32_shape(op, "dq", dq, q.shape());
  require_f32_shape(op, "dk", dk, k.shape());
  require_f32_shape(op, "dv", dv, v.shape());
  if (out.defined()) require_f32_shape(op, "out", out, {T, Hq, Dv});
  if (lse.defined()) {
    if (!out.defined()) throw ShapeError(str(op, ": lse is given without the forward's output"));
    require_f32_shape(op, "lse", lse, {T, Hq});
  }
  if (opts.q_offset != 0 || opts.q_pos.defined())
    throw ShapeError(str(op, ": only a whole sequence from position 0 (q_offset 0, no q_pos)"));
  if (opts.alibi_slopes.defined()) require_f32_shape(op, "alibi_slopes", opts.alibi_slopes, {Hq});
  const int64_t window = opts.sliding_window ? *opts.sliding_window : 0;
  const float cap = opts.softcap ? *opts.softcap : 0.0f;
  dispatch(
      op, ctx, k.dtype(), {q, k, v, dout, dq, dk, dv, opts.alibi_slopes, out, lse},
      [&] {
        AttnBwdOptions o;
        o.scale = opts.scale;
        o.sliding_window = window;
        o.softcap = cap;
        o.alibi_slopes = opts.alibi_slopes.defined() ? opts.alibi_slopes.data<float>() : nullptr;
        const bool f32 = k.dtype() == DType::F32;  // 16-bit k/v: their exact values
        const Tensor kf = f32 ? k : k.to(DType::F32), vf = f32 ? v : v.to(DType::F32);
        attention_backward(q.data<float>(), kf.data<float>(), vf.data<float>(), T, Hq, Hkv, D, Dv, o,
                           dout.data<float>(), dq.data<float>(), dk.data<float>(), dv.data<float>());
      },
      [&](auto& c) {
        cuda::AttentionBackward a;
        a.T = T, a.Hq = Hq, a.Hkv = Hkv, a.D = D, a.Dv = Dv;
        a.scale = opts.scale;
        a.window = window;
        a.softcap = cap;
        a.alibi = opts.alibi_slopes.defined() ? opts.alibi_slopes.template data<float>() : nullptr;
        a.q = q.template data<float>(), a.dout = dout.template data<float>();
        a.k = k.data_ptr(), a.v = v.data_ptr(), a.kv_dtype = k.dtype();
        a.dq = dq.template data<float>(), a.dk = dk.template data<float>(), a.dv = dv.template data<float>();
        if (out.defined()) a.out = out.template data<float>();
        if (lse.defined()) a.lse = lse.template data<float>();
        Tensor kf, vf;  // 16-bit k/v the tensor cores do not take: the f32 kernels on their values
        if (a.kv_dtype != DType::F32 && !cuda::attention_backward_tc_fits(a)) {
          kf = Tensor::empty(k.shape(), DType::F32, k.device());
          vf = Tensor::empty(v.shape(), DType::F32, v.device());
          copy_(c, k.view({T * Hkv, D}), kf.view({T * Hkv, D}));
          copy_(c, v.view({T * Hkv, Dv}), vf.view({T * Hkv, Dv}));
          a.k = kf.data_ptr(), a.v = vf.data_ptr(), a.kv_dtype = DType::F32;
        }
        cuda::attention_backward(make_launch(c, cuda::attention_backward_workspace_bytes(a)), a);
      });
}

void adamw_(ExecContext& ctx, const Tensor& x, const Tensor& g, const Tensor& m, const Tensor& v,
            const AdamWStep& s) {
  const char* op = "adamw_";
  require_f32_shape(op, "param", x, x.shape());
  require_f32_shape(op, "grad", g, x.shape());
  require_f32_shape(op, "exp_avg", m, x.shape());
  require_f32_shape(op, "exp_avg_sq", v, x.shape());
  dispatch(
      op, ctx, DType::F32, {x, g, m, v},
      [&] { adamw_update(x.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), x.numel(), s); },
      [&](auto& c) {
        cuda::adamw(make_launch(c, 0), x.template data<float>(), g.template data<float>(),
                    m.template data<float>(), v.template data<float>(), x.numel(),
                    cuda::AdamWScalars{s.step_size, s.bc2_sqrt, s.decay, s.b1, s.b2, s.eps});
      });
}

void sum_squares(ExecContext& ctx, const Tensor& x, const Tensor& ends, const Tensor& out) {
  const char* op = "sum_squares";
  require_f32_shape(op, "x", x, x.shape());
  if (!ends.defined() || ends.dtype() != DType::I64 || ends.dim() != 1 || !ends.is_contiguous())
    throw ShapeError(str(op, ": ends must be a contiguous i64 [n], got ", str_of(ends)));
  const int64_t n = ends.size(0);
  if (!out.defined() || out.dtype() != DType::F64 || out.shape() != Shape{n} || !out.is_contiguous())
    throw ShapeError(str(op, ": out must be a contiguous f64 [", n, "], got ", str_of(out)));
  // the segment ends are checked on the host (the caller made them there)
  const Tensor eh = ends.to(Device::cpu());
  for (int64_t k = 0; k < n; ++k) {
    const int64_t e = eh.data<int64_t>()[k], b = k ? eh.data<int64_t>()[k - 1] : 0;
    if (e < b || e > x.numel())
      throw ShapeError(str(op, ": ends[", k, "] = ", e, " outside [", b, ", ", x.numel(), "]"));
  }
  dispatch(
      op, ctx, DType::F32, {x, ends, out},
      [&] {
        for (int64_t k = 0; k < n; ++k) {
          const int64_t b = k ? eh.data<int64_t>()[k - 1] : 0;
          out.data<double>()[k] = sum_squares(x.data<float>() + b, eh.data<int64_t>()[k] - b);
        }
      },
      [&](auto& c) {
        cuda::sum_squares(make_launch(c, 0), x.template data<float>(), ends.template data<int64_t>(), n,
                          out.template data<double>());
      });
}

void scale_(ExecContext& ctx, const Tensor& x, double coef) {
  const char* op = "scale_";
  require_f32_shape(op, "x", x, x.shape());
  dispatch(
      op, ctx, DType::F32, {x}, [&] { scale_by(x.data<float>(), x.numel(), coef); },
      [&](auto& c) { cuda::scale(make_launch(c, 0), x.template data<float>(), x.numel(), coef); });
}

void embedding_backward(ExecContext& ctx, const Tensor& ids, const Tensor& dy, const Tensor& dW) {
  const char* op = "embedding_backward";
  if (!ids.defined() || ids.dtype() != DType::I64 || ids.dim() != 1 || !ids.is_contiguous())
    throw ShapeError(str(op, ": ids must be a contiguous i64 [T], got ", str_of(ids)));
  const auto vh = require_rows(op, "dW", dW);
  const int64_t T = ids.size(0), V = vh.first, H = vh.second;
  require_f32_shape(op, "dy", dy, {T, H});
  dispatch(
      op, ctx, DType::F32, {ids, dy, dW},
      [&] { embedding_backward(ids.data<int64_t>(), T, dy.data<float>(), H, V, dW.data<float>()); },
      [&](auto& c) {
        cuda::embedding_backward(make_launch(c, 0), ids.template data<int64_t>(), T,
                                 dy.template data<float>(), H, V, dW.template data<float>());
      });
}

HeadLoss cross_entropy_head_backward(ExecContext& ctx, const Tensor& h, const Tensor& W,
                                     const Tensor& targets, float softcap, int64_t chunk, float grad_scale,
                                     const Tensor& dh, bool tf32) {
  const char* op = "cross_entropy_head_backward";
  const auto th = require_rows(op, "h", h);
  const int64_t T = th.first, H = th.second;
  if (!W.defined() || (W.dtype() != DType::F32 && W.dtype() != DType::BF16 && W.dtype() != DType::F16) ||
      W.dim() != 2 || W.size(1) != H || !W.is_contiguous())
    throw ShapeError(
        str(op, ": head weight must be a contiguous f32/bf16/f16 [V, ", H, "], got ", str_of(W)));
  const bool w16 = W.dtype() != DType::F32;
  const int64_t V = W.size(0);
  if (!targets.defined() || targets.dtype() != DType::I64 || targets.shape() != Shape{T} ||
      !targets.is_contiguous())
    throw ShapeError(str(op, ": targets must be a contiguous i64 [", T, "], got ", str_of(targets)));
  if (dh.defined()) require_f32_shape(op, "dh", dh, {T, H});
  if (chunk <= 0) throw ConfigError(str(op, ": chunk must be > 0"));
  HeadLoss res;
  dispatch(
      op, ctx, DType::F32, {h, W, targets, dh},
      [&] {
        Tensor hr = h;
        if (w16) {  // h rounded to the head's dtype; W's values exact in f32
          hr = Tensor::empty(h.shape(), DType::F32, h.device());
          for (int64_t i = 0; i < h.numel(); ++i)
            hr.data<float>()[i] = round_to_dtype(h.data<float>()[i], W.dtype());
        }
        res.loss_sum = cross_entropy_head_backward(hr.data<float>(), T, H, host_f32(W).data<float>(), V,
                                                   targets.data<int64_t>(), softcap, chunk, grad_scale,
                                                   ptr_or_null(dh), &res.n_targets, W.dtype());
      },
      [&](auto& c) {
        // The targets come from the host's tokenizer; they are checked (and counted) there.
        const Tensor th_host = targets.to(Device::cpu());
        const int64_t* tg = th_host.template data<int64_t>();
        for (int64_t t = 0; t < T; ++t) {
          if (tg[t] == -100) continue;
          if (tg[t] < 0 || tg[t] >= V)
            throw ShapeError(str("labels: ", tg[t], " outside the vocabulary [0, ", V, ")"));
          ++res.n_targets;
        }
        std::vector<double> nll(static_cast<size_t>(T));
        if (w16)
          cuda::cross_entropy_head16(make_launch(c, cuda::cross_entropy16_workspace_bytes(T, H, V)),
                                     h.template data<float>(), T, H, W.data_ptr(), W.dtype(), V,
                                     targets.template data<int64_t>(), softcap, grad_scale, ptr_or_null(dh),
                                     nll.data());
        else
          cuda::cross_entropy_head(make_launch(c, cuda::cross_entropy_workspace_bytes(T, V, chunk)),
                                   h.template data<float>(), T, H, W.template data<float>(), V,
                                   targets.template data<int64_t>(), softcap, chunk, grad_scale,
                                   ptr_or_null(dh), nll.data(), tf32);
        for (double v : nll) res.loss_sum += v;
      });
  return res;
}

}  // namespace nibble::ops
