// Training forward + hand-written backward of the generic decoder (see lora_train.h). The
// forward mirrors causal_lm.cpp's blocks op for op (same ops, same order, so the loss is the
// inference forward's) and fills a LayerCache; the backward walks the layers last to first.
#include "train/lora_train.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "nibble/error.h"
#include "nn/lora.h"
#include "ops/train_ops.h"

namespace nibble::train {

using detail::str;

namespace {

// What one decoder layer's backward needs (buffers f32 on the host; shapes in comments).
struct LayerCache {
  Tensor h_in;                      // [R, C] the layer's input
  Tensor x1;                        // [R, C] attention norm output
  Tensor q_raw, k_raw;              // [R, H * D] before the q/k norms (only with them)
  Tensor q, k, v;                   // [R, H * D] as attention saw them (normed, rotated)
  Tensor a;                         // [R, Hq * D] attention output (o_proj input)
  Tensor o_raw;                     // [R, C] o_proj output before the post-attention norm (only with it)
  Tensor h_mid;                     // [R, C] h + attention (sequential residual)
  Tensor x2;                        // [R, C] MLP norm output
  Tensor g, u;                      // [R, F] gate / up before the activation (plain MLP: u only)
  Tensor act;                       // [R, F] the down projection's input
  Tensor m_raw;                     // [R, C] MLP output before the post-MLP norm (only with it)
  std::vector<nn::LoraSaved> lora;  // per Linear of the layer: qkv..., o, mlp...
};

Tensor rows(int64_t R, int64_t C) {
  return Tensor::empty({R, C}, DType::F32);
}
Tensor zero_rows(int64_t R, int64_t C) {
  return Tensor::zeros({R, C}, DType::F32);
}
float* f(const Tensor& t) {
  return const_cast<float*>(t.data<float>());
}
Tensor f32(const Tensor& t) {
  return t.dtype() == DType::F32 ? t : t.to(DType::F32);
}

ops::Act act_kind(ops::Activation a) {
  switch (a) {
    case ops::Activation::SiLU:
      return ops::Act::Silu;
    case ops::Activation::GeluErf:
      return ops::Act::GeluErf;
    case ops::Activation::GeluTanh:
      return ops::Act::GeluTanh;
    case ops::Activation::ReLU:
      return ops::Act::Relu;
  }
  throw InternalError("act_kind: unknown activation");
}

// The forward and backward of one model pass; holds the per-call state.
struct Pass {
  const CausalLM::Impl& m;
  const PassOptions& o;
  GradMap* grads;  // null: no backward
  Step st;
  ExecContext* ctx = nullptr;
  int64_t R = 0, C = 0;

  uint64_t seed(size_t li, size_t idx) const {
    return o.dropout_seed * 0x9E3779B97F4A7C15ull + uint64_t(li) * 1000003ull + uint64_t(idx) * 7919ull + 1;
  }

  // out = lin(x) (+ LoRA, its saved state in save).
  void lin_fwd(const NamedLinear& nl, const Tensor& x, const Tensor& out, nn::LoraSaved& save,
               uint64_t sd) const {
    nl.lin.forward(*ctx, x, out);
    if (!nl.lora.defined()) return;
    const Tensor xc = x.is_contiguous() ? x : x.contiguous();
    nn::lora_forward(xc.data<float>(), xc.size(0), xc.size(1), nl.lora.A.data<float>(),
                     nl.lora.B.data<float>(), nl.lora.r(), out.size(1), nl.lora.scale,
                     o.train ? nl.lora.dropout : 0.0f, sd, f(out), grads ? &save : nullptr);
  }

  // dx (may be null: not needed) += d/dx of lin for dy [R, out]; the adapter's grads accumulate.
  void lin_bwd(const NamedLinear& nl, const Tensor& x, const float* dy, float* dx,
               const nn::LoraSaved& save) const {
    if (dx) nn::linear_backward_dx(nl.lin, dy, R, dx);
    if (!nl.lora.defined()) return;
    LoraGrad& g = (*grads)[&nl];
    if (g.A.empty()) g.A.assign(size_t(nl.lora.A.numel()), 0.0f), g.B.assign(size_t(nl.lora.B.numel()), 0.0f);
    const Tensor xc = x.is_contiguous() ? x : x.contiguous();
    nn::lora_backward(dy, xc.data<float>(), R, nl.lin.in_features(), nl.lora.A.data<float>(),
                      nl.lora.B.data<float>(), nl.lora.r(), nl.lin.out_features(), nl.lora.scale, save,
                      g.A.data(), g.B.data(), dx);
  }

  void norm_fwd(const Norm& n, const Tensor& x, const Tensor& out) const { m.norm_into(n, x, out, st); }
  // dx (overwritten) of the norm at input x for dy.
  void norm_bwd(const Norm& n, const Tensor& x, const float* dy, float* dx) const {
    const int64_t rws = x.size(0), c = x.size(1);
    const Tensor w = f32(n.w);
    if (m.spec->norm == models::NormKind::RMS) {
      std::vector<float> dw(static_cast<size_t>(c));  // frozen: discarded
      ops::rms_norm_backward(x.data<float>(), w.data<float>(), rws, c, float(m.config.norm_eps),
                             m.spec->norm_unit_offset ? 1.0f : 0.0f, dy, dx, dw.data());
    } else {
      ops::layer_norm_backward(x.data<float>(), w.data<float>(), rws, c, float(m.config.norm_eps), dy, dx,
                               nullptr, nullptr);
    }
  }
  // h += norm_bwd(...)
  void add_norm_bwd(const Norm& n, const Tensor& x, const float* dy, float* dh) const {
    std::vector<float> t(size_t(x.numel()));
    norm_bwd(n, x, dy, t.data());
    for (size_t i = 0; i < t.size(); ++i) dh[i] += t[i];
  }

  ops::AttnBwdOptions attn_opts(size_t li, const DecoderLayer& L) const {
    ops::AttnBwdOptions a;
    a.scale = m.attn_scale;
    if (m.config.scale_attn_by_inverse_layer_idx) a.scale /= float(li + 1);
    if (L.sliding && m.config.sliding_window) a.sliding_window = *m.config.sliding_window;
    a.softcap = m.attn_softcap ? *m.attn_softcap : 0.0f;
    a.alibi_slopes = m.alibi_slopes.defined() ? m.alibi_slopes.data<float>() : nullptr;
    return a;
  }

  // ---- forward -------------------------------------------------------------------------------
  // x1 -> o [R, C]; fills the attention part of c.
  Tensor attention_fwd(size_t li, LayerCache& c) const {
    const DecoderLayer& L = m.layers[li];
    const models::ArchSpec& s = *m.spec;
    const int64_t D = m.head_dim, Hq = m.n_heads, Hkv = m.n_kv_heads;
    Tensor q = rows(R, Hq * D), k = rows(R, Hkv * D), v = rows(R, Hkv * D);
    if (L.qkv.size() == 3) {
      lin_fwd(L.qkv[0], c.x1, q, c.lora[0], seed(li, 0));
      lin_fwd(L.qkv[1], c.x1, k, c.lora[1], seed(li, 1));
      lin_fwd(L.qkv[2], c.x1, v, c.lora[2], seed(li, 2));
    } else if (s.qkv == models::QkvKind::Concat) {
      Tensor y = rows(R, (Hq + 2 * Hkv) * D);
      lin_fwd(L.qkv[0], c.x1, y, c.lora[0], seed(li, 0));
      ops::copy_(*ctx, y.slice(1, 0, Hq * D), q);
      ops::copy_(*ctx, y.slice(1, Hq * D, (Hq + Hkv) * D), k);
      ops::copy_(*ctx, y.slice(1, (Hq + Hkv) * D, (Hq + 2 * Hkv) * D), v);
    } else {
      Tensor y = rows(R, Hq * 3 * D);
      lin_fwd(L.qkv[0], c.x1, y, c.lora[0], seed(li, 0));
      Tensor yh = y.view({R * Hq, 3 * D});
      ops::copy_(*ctx, yh.slice(1, 0, D), q.view({R * Hq, D}));
      ops::copy_(*ctx, yh.slice(1, D, 2 * D), k.view({R * Hkv, D}));
      ops::copy_(*ctx, yh.slice(1, 2 * D, 3 * D), v.view({R * Hkv, D}));
    }
    if (L.q_norm.defined()) {
      c.q_raw = q;
      c.k_raw = k;
      Tensor qn = rows(R * Hq, D), kn = rows(R * Hkv, D);
      ops::rms_norm(*ctx, q.view({R * Hq, D}), L.q_norm.w, float(m.config.norm_eps), s.norm_unit_offset, qn);
      ops::rms_norm(*ctx, k.view({R * Hkv, D}), L.k_norm.w, float(m.config.norm_eps), s.norm_unit_offset, kn);
      q = qn.view({R, Hq * D});
      k = kn.view({R, Hkv * D});
    }
    Tensor q3 = q.view({R, Hq, D}), k3 = k.view({R, Hkv, D}), v3 = v.view({R, Hkv, D});
    if (s.pos == models::PosKind::Rope) {
      ops::apply_rope_(*ctx, q3, st.cos, st.sin, st.rot_dim);
      ops::apply_rope_(*ctx, k3, st.cos, st.sin, st.rot_dim);
    }
    c.q = q;
    c.k = k;
    c.v = v;
    ops::AttentionOptions ao;
    const ops::AttnBwdOptions bo = attn_opts(li, L);
    ao.scale = bo.scale;
    if (bo.sliding_window) ao.sliding_window = bo.sliding_window;
    ao.softcap = m.attn_softcap;
    ao.alibi_slopes = m.alibi_slopes;
    c.a = rows(R, Hq * D);
    for (const Segment& sg : st.segs) {
      ao.q_offset = 0;
      const int64_t r0 = sg.row0, r1 = sg.row0 + sg.T;
      ops::attention(*ctx, q3.slice(0, r0, r1), k3.slice(0, r0, r1), v3.slice(0, r0, r1), ao,
                     c.a.slice(0, r0, r1).view({sg.T, Hq, D}));
    }
    const size_t io = L.qkv.size();
    Tensor out = rows(R, C);
    lin_fwd(L.o, c.a, out, c.lora[io], seed(li, io));
    if (L.post_attn_norm.defined()) {
      c.o_raw = out;
      Tensor on = rows(R, C);
      norm_fwd(L.post_attn_norm, out, on);
      out = on;
    }
    return out;
  }

  // x2 -> [R, C]; fills the MLP part of c.
  Tensor mlp_fwd(size_t li, LayerCache& c) const {
    const DecoderLayer& L = m.layers[li];
    const size_t i0 = L.qkv.size() + 1;
    Tensor out = rows(R, C);
    switch (m.spec->mlp_kind) {
      case models::MlpKind::Gated: {
        const int64_t F = L.mlp[0].lin.out_features();
        c.g = rows(R, F);
        c.u = rows(R, F);
        c.act = rows(R, F);
        lin_fwd(L.mlp[0], c.x2, c.g, c.lora[i0], seed(li, i0));
        lin_fwd(L.mlp[1], c.x2, c.u, c.lora[i0 + 1], seed(li, i0 + 1));
        ops::gated_activation(*ctx, c.g, c.u, m.act, c.act);
        lin_fwd(L.mlp[2], c.act, out, c.lora[i0 + 2], seed(li, i0 + 2));
        break;
      }
      case models::MlpKind::GatedFused: {
        const int64_t F = L.mlp[0].lin.out_features() / 2;
        Tensor y = rows(R, 2 * F);
        c.act = rows(R, F);
        lin_fwd(L.mlp[0], c.x2, y, c.lora[i0], seed(li, i0));
        c.g = y.slice(1, 0, F).contiguous();
        c.u = y.slice(1, F, 2 * F).contiguous();
        ops::gated_activation(*ctx, c.g, c.u, m.act, c.act);
        lin_fwd(L.mlp[1], c.act, out, c.lora[i0 + 1], seed(li, i0 + 1));
        break;
      }
      case models::MlpKind::Plain: {
        const int64_t F = L.mlp[0].lin.out_features();
        c.u = rows(R, F);
        lin_fwd(L.mlp[0], c.x2, c.u, c.lora[i0], seed(li, i0));
        c.act = c.u.clone();
        ops::activate_(*ctx, c.act, m.act);
        lin_fwd(L.mlp[1], c.act, out, c.lora[i0 + 1], seed(li, i0 + 1));
        break;
      }
    }
    if (L.post_mlp_norm.defined()) {
      c.m_raw = out;
      Tensor mn = rows(R, C);
      norm_fwd(L.post_mlp_norm, out, mn);
      out = mn;
    }
    return out;
  }

  // h [R, C] -> the layer's output; c filled (full: everything the backward needs).
  Tensor layer_fwd(size_t li, const Tensor& h, LayerCache& c) const {
    const DecoderLayer& L = m.layers[li];
    c.h_in = h;
    c.lora.assign(L.qkv.size() + 1 + L.mlp.size(), nn::LoraSaved{});
    c.x1 = rows(R, C);
    norm_fwd(L.attn_norm, h, c.x1);
    Tensor ao = attention_fwd(li, c);
    Tensor out = rows(R, C);
    if (m.parallel_residual) {
      c.x2 = rows(R, C);
      norm_fwd(L.mlp_norm, h, c.x2);
      Tensor mo = mlp_fwd(li, c);
      // transformers: mlp_output + attn_output + residual
      std::memcpy(f(out), mo.data<float>(), size_t(R * C) * 4);
      ops::add_(*ctx, out, ao);
      ops::add_(*ctx, out, h);
      return out;
    }
    c.h_mid = h.clone();
    ops::add_(*ctx, c.h_mid, ao);
    c.x2 = rows(R, C);
    norm_fwd(L.mlp_norm, c.h_mid, c.x2);
    Tensor mo = mlp_fwd(li, c);
    std::memcpy(f(out), c.h_mid.data<float>(), size_t(R * C) * 4);
    ops::add_(*ctx, out, mo);
    return out;
  }

  // ---- backward ------------------------------------------------------------------------------
  // d(attention block output) -> dx1 (accumulated; null at layer 0, where it is not needed).
  void attention_bwd(size_t li, const LayerCache& c, const float* dout, float* dx1) const {
    const DecoderLayer& L = m.layers[li];
    const models::ArchSpec& s = *m.spec;
    const int64_t D = m.head_dim, Hq = m.n_heads, Hkv = m.n_kv_heads;
    std::vector<float> dpost;
    if (L.post_attn_norm.defined()) {
      dpost.resize(size_t(R * C));
      norm_bwd(L.post_attn_norm, c.o_raw, dout, dpost.data());
      dout = dpost.data();
    }
    const size_t io = L.qkv.size();
    Tensor da = zero_rows(R, Hq * D);
    lin_bwd(L.o, c.a, dout, f(da), c.lora[io]);
    Tensor dq = rows(R, Hq * D), dk = rows(R, Hkv * D), dv = rows(R, Hkv * D);
    const ops::AttnBwdOptions bo = attn_opts(li, L);
    for (const Segment& sg : st.segs) {
      const int64_t r0 = sg.row0;
      ops::attention_backward(c.q.data<float>() + r0 * Hq * D, c.k.data<float>() + r0 * Hkv * D,
                              c.v.data<float>() + r0 * Hkv * D, sg.T, Hq, Hkv, D, D, bo,
                              da.data<float>() + r0 * Hq * D, f(dq) + r0 * Hq * D, f(dk) + r0 * Hkv * D,
                              f(dv) + r0 * Hkv * D);
    }
    if (s.pos == models::PosKind::Rope) {
      ops::rope_backward_(f(dq), R, Hq, D, st.cos.data<float>(), st.sin.data<float>(), st.rot_dim);
      ops::rope_backward_(f(dk), R, Hkv, D, st.cos.data<float>(), st.sin.data<float>(), st.rot_dim);
    }
    if (L.q_norm.defined()) {
      Tensor t = rows(R, Hq * D);
      std::vector<float> dw(static_cast<size_t>(D));
      const float off = s.norm_unit_offset ? 1.0f : 0.0f, eps = float(m.config.norm_eps);
      ops::rms_norm_backward(c.q_raw.data<float>(), f32(L.q_norm.w).data<float>(), R * Hq, D, eps, off,
                             dq.data<float>(), f(t), dw.data());
      dq = t;
      t = rows(R, Hkv * D);
      ops::rms_norm_backward(c.k_raw.data<float>(), f32(L.k_norm.w).data<float>(), R * Hkv, D, eps, off,
                             dk.data<float>(), f(t), dw.data());
      dk = t;
    }
    if (L.qkv.size() == 3) {
      lin_bwd(L.qkv[0], c.x1, dq.data<float>(), dx1, c.lora[0]);
      lin_bwd(L.qkv[1], c.x1, dk.data<float>(), dx1, c.lora[1]);
      lin_bwd(L.qkv[2], c.x1, dv.data<float>(), dx1, c.lora[2]);
      return;
    }
    Tensor dy;
    if (s.qkv == models::QkvKind::Concat) {
      dy = rows(R, (Hq + 2 * Hkv) * D);
      ops::copy_(*ctx, dq, dy.slice(1, 0, Hq * D));
      ops::copy_(*ctx, dk, dy.slice(1, Hq * D, (Hq + Hkv) * D));
      ops::copy_(*ctx, dv, dy.slice(1, (Hq + Hkv) * D, (Hq + 2 * Hkv) * D));
    } else {
      dy = rows(R, Hq * 3 * D);
      Tensor yh = dy.view({R * Hq, 3 * D});
      ops::copy_(*ctx, dq.view({R * Hq, D}), yh.slice(1, 0, D));
      ops::copy_(*ctx, dk.view({R * Hkv, D}), yh.slice(1, D, 2 * D));
      ops::copy_(*ctx, dv.view({R * Hkv, D}), yh.slice(1, 2 * D, 3 * D));
    }
    lin_bwd(L.qkv[0], c.x1, dy.data<float>(), dx1, c.lora[0]);
  }

  // d(MLP block output) -> dx2 (accumulated).
  void mlp_bwd(size_t li, const LayerCache& c, const float* dout, float* dx2) const {
    const DecoderLayer& L = m.layers[li];
    const size_t i0 = L.qkv.size() + 1;
    std::vector<float> dpost;
    if (L.post_mlp_norm.defined()) {
      dpost.resize(size_t(R * C));
      norm_bwd(L.post_mlp_norm, c.m_raw, dout, dpost.data());
      dout = dpost.data();
    }
    const ops::Act a = act_kind(m.act);
    const int64_t F = c.act.size(1);
    Tensor dact = zero_rows(R, F);
    const NamedLinear& down = L.mlp.back();
    lin_bwd(down, c.act, dout, f(dact), c.lora[i0 + L.mlp.size() - 1]);
    switch (m.spec->mlp_kind) {
      case models::MlpKind::Gated: {
        Tensor dg = rows(R, F), du = rows(R, F);
        ops::gated_act_backward(a, c.g.data<float>(), c.u.data<float>(), dact.data<float>(), R * F, f(dg),
                                f(du));
        lin_bwd(L.mlp[0], c.x2, dg.data<float>(), dx2, c.lora[i0]);
        lin_bwd(L.mlp[1], c.x2, du.data<float>(), dx2, c.lora[i0 + 1]);
        break;
      }
      case models::MlpKind::GatedFused: {
        Tensor dg = rows(R, F), du = rows(R, F), dy = rows(R, 2 * F);
        ops::gated_act_backward(a, c.g.data<float>(), c.u.data<float>(), dact.data<float>(), R * F, f(dg),
                                f(du));
        ops::copy_(*ctx, dg, dy.slice(1, 0, F));
        ops::copy_(*ctx, du, dy.slice(1, F, 2 * F));
        lin_bwd(L.mlp[0], c.x2, dy.data<float>(), dx2, c.lora[i0]);
        break;
      }
      case models::MlpKind::Plain: {
        Tensor du = rows(R, F);
        ops::act_backward(a, c.u.data<float>(), dact.data<float>(), R * F, f(du));
        lin_bwd(L.mlp[0], c.x2, du.data<float>(), dx2, c.lora[i0]);
        break;
      }
    }
  }

  // dh [R, C]: d(layer output) in, d(layer input) out (in place); at layer 0 only the adapters'
  // gradients matter, so the input gradient is not formed.
  void layer_bwd(size_t li, const LayerCache& c, Tensor& dh) const {
    const DecoderLayer& L = m.layers[li];
    const bool need_dx = li > 0;
    Tensor dx2 = zero_rows(R, C), dx1 = zero_rows(R, C);
    if (m.parallel_residual) {
      mlp_bwd(li, c, dh.data<float>(), f(dx2));
      attention_bwd(li, c, dh.data<float>(), need_dx ? f(dx1) : nullptr);
      if (!need_dx) return;
      add_norm_bwd(L.mlp_norm, c.h_in, dx2.data<float>(), f(dh));
      add_norm_bwd(L.attn_norm, c.h_in, dx1.data<float>(), f(dh));
      return;
    }
    mlp_bwd(li, c, dh.data<float>(), f(dx2));
    add_norm_bwd(L.mlp_norm, c.h_mid, dx2.data<float>(), f(dh));  // dh is now d(h_mid)
    attention_bwd(li, c, dh.data<float>(), need_dx ? f(dx1) : nullptr);
    if (need_dx) add_norm_bwd(L.attn_norm, c.h_in, dx1.data<float>(), f(dh));
  }
};

std::vector<int64_t> targets_of(const TokenBatch& b) {
  std::vector<int64_t> t;
  for (size_t s = 0; s < b.input_ids.size(); ++s) {
    const auto& lab = b.labels.empty() ? b.input_ids[s] : b.labels[s];
    const size_t T = b.input_ids[s].size();
    if (lab.size() != T)
      throw ShapeError(str("labels of sequence ", s, " have ", lab.size(), " entries for ", T, " input ids"));
    for (size_t i = 0; i < T; ++i) t.push_back(i + 1 < T ? lab[i + 1] : -100);
  }
  return t;
}

PassResult run(const CausalLM::Impl& m, const TokenBatch& b, const Tensor& head_w, GradMap* grads,
               const PassOptions& o) {
  if (!m.device.is_cpu() || m.place.split())
    throw UnsupportedError("LoRA training runs on the CPU only for now (load with device_map cpu)");
  if (m.lm_head.lin.bias().defined()) throw UnsupportedError("LoRA training: an output head with a bias");
  if (!b.labels.empty() && b.labels.size() != b.input_ids.size())
    throw ShapeError(str("labels for ", b.labels.size(), " sequences, input_ids has ", b.input_ids.size()));
  const std::vector<int64_t> targets = targets_of(b);
  Pass p{m, o, grads, {}, nullptr, 0, m.config.hidden_size};
  std::vector<std::unique_ptr<KVCache>> caches;
  std::vector<KVCache*> cp;
  for (const auto& s : b.input_ids) {
    caches.push_back(m.make_cache(int64_t(std::max<size_t>(s.size(), 1))));
    cp.push_back(caches.back().get());
  }
  p.st = m.plan(b.input_ids, cp);
  p.ctx = p.st.ctx;
  p.R = p.st.R;
  const int64_t R = p.R, C = p.C, V = head_w.size(0);
  const size_t nl = m.layers.size();
  std::vector<LayerCache> cache(nl);
  Tensor h = m.embed_block(p.st);  // [R, C]
  for (size_t li = 0; li < nl; ++li) {
    LayerCache full;
    Tensor next = p.layer_fwd(li, h, full);
    if (grads && o.checkpointing) {
      cache[li].h_in = h;  // recomputed in the backward
    } else if (grads) {
      cache[li] = std::move(full);
    }
    h = next;
  }
  Tensor xf = rows(R, C);  // [R, C] final norm output
  p.norm_fwd(m.final_norm, h, xf);
  PassResult res;
  res.n_tokens = R;
  Tensor dxf = rows(R, C);
  const float softcap = m.final_softcap ? *m.final_softcap : 0.0f;
  res.loss_sum = ops::cross_entropy_head_backward(xf.data<float>(), R, C, head_w.data<float>(), V,
                                                  targets.data(), softcap, o.vocab_chunk, o.grad_scale,
                                                  grads ? f(dxf) : nullptr, &res.n_targets);
  if (!grads) return res;
  Tensor dh = rows(R, C);
  p.norm_bwd(m.final_norm, h, dxf.data<float>(), f(dh));
  for (size_t li = nl; li-- > 0;) {
    if (o.checkpointing) {
      LayerCache full;
      p.layer_fwd(li, cache[li].h_in, full);
      p.layer_bwd(li, full, dh);
    } else {
      p.layer_bwd(li, cache[li], dh);
    }
    cache[li] = LayerCache{};  // free as we go
  }
  return res;
}

}  // namespace

int64_t count_targets(const TokenBatch& b) {
  int64_t n = 0;
  for (int64_t t : targets_of(b)) n += t != -100;
  return n;
}

Tensor head_weight_f32(const CausalLM::Impl& m) {
  const nn::Linear& l = m.lm_head.lin;
  if (l.format() == nn::WeightFormat::Fp) return f32(l.weight()).contiguous();
  return l.traits().dequantize(l);
}

PassResult forward_backward(const CausalLM::Impl& m, const TokenBatch& b, const Tensor& head_w,
                            GradMap& grads, const PassOptions& o) {
  return run(m, b, head_w, &grads, o);
}

PassResult eval_loss(const CausalLM::Impl& m, const TokenBatch& b, const Tensor& head_w) {
  PassOptions o;
  o.train = false;
  return run(m, b, head_w, nullptr, o);
}

}  // namespace nibble::train
