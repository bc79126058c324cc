// Training forward + hand-written backward of the generic decoder (see lora_train.h). The
// forward mirrors causal_lm.cpp's blocks op for op (same ops, same order, so the loss is the
// inference forward's) and fills a LayerCache; the backward walks the layers last to first.
#include "train/lora_train.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "nibble/error.h"
#include "nn/lora.h"
#include "ops/train_ops.h"

namespace nibble::train {

using detail::str;

namespace {

// What one decoder layer's backward needs (f32 buffers on the model's device, or, as
// keep_selective leaves it, some entries in the cache dtype and others undefined; shapes in comments).
struct LayerCache {
  Tensor h_in;                      // [R, C] the layer's input
  Tensor x1;                        // [R, C] attention norm output
  Tensor q_raw, k_raw;              // [R, H * D] before the q/k norms (only with them)
  Tensor q, k, v;                   // [R, H * D] as attention saw them (normed, rotated; k and v
                                    // in the KV cache's dtype: 16-bit on CUDA with a 16-bit compute)
  Tensor a;                         // [R, Hq * D] attention output (o_proj input)
  Tensor lse;                       // [R, Hq] each row's log-sum-exp, where the attention wrote it
  Tensor o_raw;                     // [R, C] o_proj output before the post-attention norm (only with it)
  Tensor h_mid;                     // [R, C] h + attention (sequential residual)
  Tensor x2;                        // [R, C] MLP norm output
  Tensor g, u;                      // [R, F] gate / up before the activation (plain MLP: u only)
  Tensor act;                       // [R, F] the down projection's input
  Tensor m_raw;                     // [R, C] MLP output before the post-MLP norm (only with it)
  std::vector<nn::LoraCache> lora;  // per Linear of the layer: qkv..., o, mlp...
};

// NIBBLE_TRAIN_LSE=0 (benchmarks, A/B runs): the backward computes the softmax statistics itself
// instead of taking the forward's.
bool forward_lse() {
  static const bool on = [] {
    const char* v = std::getenv("NIBBLE_TRAIN_LSE");
    return !(v && v[0] == '0');
  }();
  return on;
}

Tensor f32(const Tensor& t) {
  return t.dtype() == DType::F32 ? t : t.to(DType::F32);
}

// One pass's adapter gradients on the model's device (dA, dB per adapted Linear), added into the
// host GradMap at the end of the pass.
struct DeviceGrad {
  Tensor A, B;
};
using DeviceGrads = std::map<const NamedLinear*, DeviceGrad>;

// The forward and backward of one model pass; holds the per-call state. Every activation and
// gradient is a Tensor on the model's device and every computation an op of ops/ or nn/lora.h.
struct Pass {
  const CausalLM::Impl& m;
  const PassOptions& o;
  DeviceGrads* grads;  // null: no backward
  Step st;
  ExecContext* ctx = nullptr;
  int64_t R = 0, C = 0;

  Tensor rows(int64_t r, int64_t c) const { return Tensor::empty({r, c}, DType::F32, m.device); }
  Tensor zeros(const Shape& s) const {
    Tensor t = Tensor::empty(s, DType::F32, m.device);
    ops::zero_(*ctx, t);
    return t;
  }
  Tensor zero_rows(int64_t r, int64_t c) const { return zeros({r, c}); }

  uint64_t seed(size_t li, size_t idx) const {
    return o.dropout_seed * 0x9E3779B97F4A7C15ull + uint64_t(li) * 1000003ull + uint64_t(idx) * 7919ull + 1;
  }

  // out = lin(x) (+ LoRA, its saved state in save).
  void lin_fwd(const NamedLinear& nl, const Tensor& x, const Tensor& out, nn::LoraCache& save,
               uint64_t sd) const {
    nl.lin.forward(*ctx, x, out);
    if (!nl.lora.defined()) return;
    nn::lora_forward(*ctx, nl.lora, x, o.train ? nl.lora.dropout : 0.0f, sd, out, grads ? &save : nullptr);
  }

  // dx (undefined: not needed) += d/dx of lin for dy [R, out]; the adapter's grads accumulate.
  void lin_bwd(const NamedLinear& nl, const Tensor& x, const Tensor& dy, const Tensor& dx,
               const nn::LoraCache& save) const {
    if (dx.defined()) nn::linear_backward_dx(*ctx, nl.lin, dy, dx);
    if (!nl.lora.defined()) return;
    DeviceGrad& g = (*grads)[&nl];
    if (!g.A.defined()) {
      g.A = zeros(nl.lora.A.shape());
      g.B = zeros(nl.lora.B.shape());
    }
    nn::lora_backward(*ctx, nl.lora, x, dy, save, g.A, g.B, dx);
  }

  void norm_fwd(const Norm& n, const Tensor& x, const Tensor& out) const { m.norm_into(n, x, out, st); }
  // dx (overwritten) of the norm at input x for dy (the norm's weight is frozen).
  void norm_bwd(const Norm& n, const Tensor& x, const Tensor& dy, const Tensor& dx) const {
    if (m.spec->norm == models::NormKind::RMS)
      ops::rms_norm_backward(*ctx, x, n.w, float(m.config.norm_eps), m.spec->norm_unit_offset, dy, dx,
                             Tensor());
    else
      ops::layer_norm_backward(*ctx, x, n.w, float(m.config.norm_eps), dy, dx, Tensor(), Tensor());
  }
  // dh += norm_bwd(...)
  void add_norm_bwd(const Norm& n, const Tensor& x, const Tensor& dy, const Tensor& dh) const {
    const Tensor t = rows(x.size(0), x.size(1));
    norm_bwd(n, x, dy, t);
    ops::add_(*ctx, dh, t);
  }

  // The attention options of layer li, for the forward and the backward alike.
  ops::AttentionOptions attn_opts(size_t li, const DecoderLayer& L) const {
    ops::AttentionOptions a;
    a.scale = m.attn_scale;
    if (m.config.scale_attn_by_inverse_layer_idx) a.scale /= float(li + 1);
    if (L.sliding && m.config.sliding_window && *m.config.sliding_window)
      a.sliding_window = *m.config.sliding_window;
    a.softcap = m.attn_softcap;
    a.alibi_slopes = m.alibi_slopes;
    return a;
  }
  // t in dtype dt on the model's device: t itself when it is in it, else a converted copy.
  Tensor converted(const Tensor& t, DType dt) const {
    if (!t.defined() || t.dtype() == dt) return t;
    Tensor out = Tensor::empty(t.shape(), dt, m.device);
    ops::copy_(*ctx, t, out);
    return out;
  }
  // In the cache dtype (what Selective keeps; k and v always), and back to f32.
  Tensor saved(const Tensor& t) const { return converted(t, m.cache_dtype(m.device)); }
  Tensor widened(const Tensor& t) const { return converted(t, DType::F32); }

  // c.a [R, Hq * D] = causal attention of each sequence over c.q, c.k, c.v ([R, H * D], as
  // attention_fwd leaves them); with a backward to come, c.lse [R, Hq] where every sequence's
  // kernel wrote it (the backward's softmax statistics), else undefined.
  void attention_core(size_t li, LayerCache& c) const {
    const int64_t D = m.head_dim, Hq = m.n_heads, Hkv = m.n_kv_heads;
    const Tensor q3 = c.q.view({R, Hq, D}), k3 = c.k.view({R, Hkv, D}), v3 = c.v.view({R, Hkv, D});
    ops::AttentionOptions ao = attn_opts(li, m.layers[li]);
    ao.q_offset = 0;
    c.lse = grads && !m.device.is_cpu() && forward_lse() ? Tensor::empty({R, Hq}, DType::F32, m.device)
                                                         : Tensor();
    bool all = true;
    for (const Segment& sg : st.segs) {
      const int64_t r0 = sg.row0, r1 = sg.row0 + sg.T;
      all &= ops::attention(*ctx, q3.slice(0, r0, r1), k3.slice(0, r0, r1), v3.slice(0, r0, r1), ao,
                            c.a.slice(0, r0, r1).view({sg.T, Hq, D}),
                            c.lse.defined() ? c.lse.slice(0, r0, r1) : Tensor());
    }
    if (!all) c.lse = Tensor();
  }

  // act [R, F] = the MLP's activation of c.g / c.u (as mlp_fwd forms it).
  void activation(const LayerCache& c, const Tensor& act) const {
    if (m.spec->mlp_kind == models::MlpKind::Plain) {
      ops::copy_(*ctx, c.u, act);
      ops::activate_(*ctx, act, m.act);
    } else {
      ops::gated_activation(*ctx, c.g, c.u, m.act, act);
    }
  }

  // ---- what the backward keeps (PassOptions::recompute) -----------------------------------------
  // Selective: of a layer's full cache, the residual stream, q/k/v, the MLP's pre-activation
  // outputs and the raw outputs of post-norms, in the cache dtype; the adapters' caches as they are.
  LayerCache keep_selective(LayerCache&& c) const {
    LayerCache s;
    s.h_in = saved(c.h_in);
    s.h_mid = saved(c.h_mid);
    s.q_raw = saved(c.q_raw);
    s.k_raw = saved(c.k_raw);
    s.q = saved(c.q);
    s.k = c.k;
    s.v = c.v;
    s.o_raw = saved(c.o_raw);
    s.g = saved(c.g);
    s.u = saved(c.u);
    s.m_raw = saved(c.m_raw);
    s.lora = std::move(c.lora);
    return s;
  }
  // The f32 cache of layer li from keep_selective's, in two parts so that one block's restored
  // values are not held while the other block's backward runs: restore_mlp before the MLP's
  // backward (the MLP norm and the activation recomputed), restore_attention before the
  // attention's (the attention norm and the attention core recomputed). Each drops the kept
  // entries it has restored.
  LayerCache restore_mlp(size_t li, LayerCache& s) const {
    const DecoderLayer& L = m.layers[li];
    LayerCache c;
    // h_in widened here when the MLP norm reads it (parallel residual), else by restore_attention
    c.h_in = m.parallel_residual ? widened(s.h_in) : s.h_in;
    c.h_mid = widened(s.h_mid);
    c.x2 = rows(R, C);
    norm_fwd(L.mlp_norm, m.parallel_residual ? c.h_in : c.h_mid, c.x2);
    c.g = widened(s.g);
    c.u = widened(s.u);
    c.act = rows(R, c.u.size(1));
    activation(c, c.act);
    c.m_raw = widened(s.m_raw);
    c.lora = std::move(s.lora);
    s.h_mid = s.g = s.u = s.m_raw = Tensor();
    return c;
  }
  void restore_attention(size_t li, LayerCache& s, LayerCache& c) const {
    const DecoderLayer& L = m.layers[li];
    c.h_in = widened(c.h_in);  // restore_mlp's (f32 already with a parallel residual)
    c.x1 = rows(R, C);
    norm_fwd(L.attn_norm, c.h_in, c.x1);
    c.q_raw = widened(s.q_raw);
    c.k_raw = widened(s.k_raw);
    c.q = widened(s.q);
    c.k = s.k;
    c.v = s.v;
    c.a = rows(R, m.n_heads * m.head_dim);
    attention_core(li, c);
    c.o_raw = widened(s.o_raw);
    s = LayerCache{};
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
    if (s.pos == models::PosKind::Rope) {
      ops::apply_rope_(*ctx, q.view({R, Hq, D}), st.cos, st.sin, st.rot_dim);
      ops::apply_rope_(*ctx, k.view({R, Hkv, D}), st.cos, st.sin, st.rot_dim);
    }
    // k and v in the KV cache's dtype, as inference keeps them there
    k = saved(k);
    v = saved(v);
    c.q = q;
    c.k = k;
    c.v = v;
    c.a = rows(R, Hq * D);
    attention_core(li, c);
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
        activation(c, c.act);
        lin_fwd(L.mlp[2], c.act, out, c.lora[i0 + 2], seed(li, i0 + 2));
        break;
      }
      case models::MlpKind::GatedFused: {
        const int64_t F = L.mlp[0].lin.out_features() / 2;
        Tensor y = rows(R, 2 * F);
        c.act = rows(R, F);
        lin_fwd(L.mlp[0], c.x2, y, c.lora[i0], seed(li, i0));
        c.g = rows(R, F);
        c.u = rows(R, F);
        ops::copy_(*ctx, y.slice(1, 0, F), c.g);
        ops::copy_(*ctx, y.slice(1, F, 2 * F), c.u);
        activation(c, c.act);
        lin_fwd(L.mlp[1], c.act, out, c.lora[i0 + 1], seed(li, i0 + 1));
        break;
      }
      case models::MlpKind::Plain: {
        const int64_t F = L.mlp[0].lin.out_features();
        c.u = rows(R, F);
        lin_fwd(L.mlp[0], c.x2, c.u, c.lora[i0], seed(li, i0));
        c.act = rows(R, F);
        activation(c, c.act);
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
    c.lora.assign(L.qkv.size() + 1 + L.mlp.size(), nn::LoraCache{});
    c.x1 = rows(R, C);
    norm_fwd(L.attn_norm, h, c.x1);
    Tensor ao = attention_fwd(li, c);
    Tensor out = rows(R, C);
    if (m.parallel_residual) {
      c.x2 = rows(R, C);
      norm_fwd(L.mlp_norm, h, c.x2);
      Tensor mo = mlp_fwd(li, c);
      // transformers: mlp_output + attn_output + residual
      ops::copy_(*ctx, mo, out);
      ops::add_(*ctx, out, ao);
      ops::add_(*ctx, out, h);
      return out;
    }
    c.h_mid = h.clone();
    ops::add_(*ctx, c.h_mid, ao);
    c.x2 = rows(R, C);
    norm_fwd(L.mlp_norm, c.h_mid, c.x2);
    Tensor mo = mlp_fwd(li, c);
    ops::copy_(*ctx, c.h_mid, out);
    ops::add_(*ctx, out, mo);
    return out;
  }

  // ---- backward ------------------------------------------------------------------------------
  // d(attention block output) -> dx1 (accumulated; undefined at layer 0, where it is not needed).
  // The entries of c are released as they stop being needed (the layer's peak is lower).
  void attention_bwd(size_t li, LayerCache& c, Tensor dout, const Tensor& dx1) const {
    const DecoderLayer& L = m.layers[li];
    const models::ArchSpec& s = *m.spec;
    const int64_t D = m.head_dim, Hq = m.n_heads, Hkv = m.n_kv_heads;
    if (L.post_attn_norm.defined()) {
      const Tensor t = rows(R, C);
      norm_bwd(L.post_attn_norm, c.o_raw, dout, t);
      dout = t;
    }
    const size_t io = L.qkv.size();
    Tensor da = zero_rows(R, Hq * D);
    lin_bwd(L.o, c.a, dout, da, c.lora[io]);
    Tensor dq = rows(R, Hq * D), dk = rows(R, Hkv * D), dv = rows(R, Hkv * D);
    const ops::AttentionOptions ao = attn_opts(li, L);
    const auto heads = [&](const Tensor& t, int64_t H, const Segment& sg) {
      return t.view({R, H, D}).slice(0, sg.row0, sg.row0 + sg.T);
    };
    for (const Segment& sg : st.segs)
      ops::attention_backward(*ctx, heads(c.q, Hq, sg), heads(c.k, Hkv, sg), heads(c.v, Hkv, sg), ao,
                              heads(da, Hq, sg), heads(dq, Hq, sg), heads(dk, Hkv, sg), heads(dv, Hkv, sg),
                              heads(c.a, Hq, sg),
                              c.lse.defined() ? c.lse.slice(0, sg.row0, sg.row0 + sg.T) : Tensor());
    c.q = c.k = c.v = c.a = c.lse = da = Tensor();
    if (s.pos == models::PosKind::Rope) {
      ops::rope_backward_(*ctx, dq.view({R, Hq, D}), st.cos, st.sin, st.rot_dim);
      ops::rope_backward_(*ctx, dk.view({R, Hkv, D}), st.cos, st.sin, st.rot_dim);
    }
    if (L.q_norm.defined()) {
      const float eps = float(m.config.norm_eps);
      Tensor t = rows(R, Hq * D);
      ops::rms_norm_backward(*ctx, c.q_raw.view({R * Hq, D}), L.q_norm.w, eps, s.norm_unit_offset,
                             dq.view({R * Hq, D}), t.view({R * Hq, D}), Tensor());
      dq = t;
      t = rows(R, Hkv * D);
      ops::rms_norm_backward(*ctx, c.k_raw.view({R * Hkv, D}), L.k_norm.w, eps, s.norm_unit_offset,
                             dk.view({R * Hkv, D}), t.view({R * Hkv, D}), Tensor());
      dk = t;
    }
    if (L.qkv.size() == 3) {
      lin_bwd(L.qkv[0], c.x1, dq, dx1, c.lora[0]);
      lin_bwd(L.qkv[1], c.x1, dk, dx1, c.lora[1]);
      lin_bwd(L.qkv[2], c.x1, dv, dx1, c.lora[2]);
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
    lin_bwd(L.qkv[0], c.x1, dy, dx1, c.lora[0]);
  }

  // d(MLP block output) -> dx2 (accumulated); c's entries released as attention_bwd does.
  void mlp_bwd(size_t li, LayerCache& c, Tensor dout, const Tensor& dx2) const {
    const DecoderLayer& L = m.layers[li];
    const size_t i0 = L.qkv.size() + 1;
    if (L.post_mlp_norm.defined()) {
      const Tensor t = rows(R, C);
      norm_bwd(L.post_mlp_norm, c.m_raw, dout, t);
      dout = t;
    }
    const int64_t F = c.act.size(1);
    Tensor dact = zero_rows(R, F);
    const NamedLinear& down = L.mlp.back();
    lin_bwd(down, c.act, dout, dact, c.lora[i0 + L.mlp.size() - 1]);
    c.act = Tensor();
    switch (m.spec->mlp_kind) {
      case models::MlpKind::Gated: {
        // in place: g and u are not needed after this (restored or the forward's, the pass's own)
        Tensor dg = c.g, du = c.u;
        ops::gated_act_backward(*ctx, m.act, c.g, c.u, dact, dg, du);
        c.g = c.u = dact = Tensor();
        lin_bwd(L.mlp[0], c.x2, dg, dx2, c.lora[i0]);
        lin_bwd(L.mlp[1], c.x2, du, dx2, c.lora[i0 + 1]);
        break;
      }
      case models::MlpKind::GatedFused: {
        Tensor dg = c.g, du = c.u, dy = rows(R, 2 * F);
        ops::gated_act_backward(*ctx, m.act, c.g, c.u, dact, dg, du);
        c.g = c.u = dact = Tensor();
        ops::copy_(*ctx, dg, dy.slice(1, 0, F));
        ops::copy_(*ctx, du, dy.slice(1, F, 2 * F));
        lin_bwd(L.mlp[0], c.x2, dy, dx2, c.lora[i0]);
        break;
      }
      case models::MlpKind::Plain: {
        Tensor du = rows(R, F);
        ops::act_backward(*ctx, m.act, c.u, dact, du);
        lin_bwd(L.mlp[0], c.x2, du, dx2, c.lora[i0]);
        break;
      }
    }
  }

  // dh [R, C]: d(layer output) in, d(layer input) out (in place); at layer 0 only the adapters'
  // gradients matter, so the input gradient is not formed. kept (Selective): c holds restore_mlp's
  // part, and the attention's is restored from kept once the MLP's backward is done.
  void layer_bwd(size_t li, LayerCache& c, const Tensor& dh, LayerCache* kept = nullptr) const {
    const DecoderLayer& L = m.layers[li];
    const bool need_dx = li > 0;
    Tensor dx2 = zero_rows(R, C);
    mlp_bwd(li, c, dh, dx2);
    c.x2 = Tensor();
    if (!m.parallel_residual) {
      add_norm_bwd(L.mlp_norm, c.h_mid, dx2, dh);  // dh is now d(h_mid)
      c.h_mid = dx2 = Tensor();
    }
    if (kept) restore_attention(li, *kept, c);
    const Tensor dx1 = need_dx ? zero_rows(R, C) : Tensor();
    attention_bwd(li, c, dh, dx1);
    if (!need_dx) return;
    if (m.parallel_residual) add_norm_bwd(L.mlp_norm, c.h_in, dx2, dh);
    add_norm_bwd(L.attn_norm, c.h_in, dx1, dh);
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
  if (m.place.split())
    throw UnsupportedError("LoRA training runs on a model on one device (load with device_map cpu or cuda)");
  if (m.lm_head.lin.bias().defined()) throw UnsupportedError("LoRA training: an output head with a bias");
  if (!b.labels.empty() && b.labels.size() != b.input_ids.size())
    throw ShapeError(str("labels for ", b.labels.size(), " sequences, input_ids has ", b.input_ids.size()));
  const std::vector<int64_t> targets = targets_of(b);
  DeviceGrads dgrads;  // the step's device accumulators where the caller gave them, else this pass's
  if (grads)
    for (const auto& [nl, g] : *grads)
      if (g.dA.defined()) dgrads[nl] = DeviceGrad{g.dA, g.dB};
  Pass p{m, o, grads ? &dgrads : nullptr, {}, nullptr, 0, m.config.hidden_size};
  std::vector<std::unique_ptr<KVCache>> caches;
  std::vector<KVCache*> cp;
  for (size_t s = 0; s < b.input_ids.size(); ++s) {
    caches.push_back(m.make_cache(0));  // positions and rope state only: no K/V storage
    cp.push_back(caches.back().get());
  }
  p.st = m.plan(b.input_ids, cp, /*kv=*/false);
  p.ctx = p.st.ctx;
  p.R = p.st.R;
  const int64_t R = p.R, C = p.C;
  const size_t nl = m.layers.size();
  std::vector<LayerCache> cache(nl);
  Tensor h = m.embed_block(p.st);  // [R, C]
  const auto policy = [&](size_t li) {
    return o.recompute == Recompute::Selective && int64_t(li) < o.full_layers ? Recompute::Full : o.recompute;
  };
  for (size_t li = 0; li < nl; ++li) {
    LayerCache full;
    Tensor next = p.layer_fwd(li, h, full);
    if (grads) {
      const Recompute pol = policy(li);
      if (pol == Recompute::None)
        cache[li] = std::move(full);
      else if (pol == Recompute::Selective)
        cache[li] = p.keep_selective(std::move(full));
      else
        cache[li].h_in = h;  // the layer is recomputed in the backward
    }
    h = next;
  }
  Tensor xf = p.rows(R, C);  // [R, C] final norm output
  p.norm_fwd(m.final_norm, h, xf);
  PassResult res;
  res.n_tokens = R;
  const Tensor dxf = grads ? p.rows(R, C) : Tensor();
  const float softcap = m.final_softcap ? *m.final_softcap : 0.0f;
  const Tensor tg = Tensor::from_vector({R}, DType::I64, targets).to(m.device);
  // a head stored in 16 bits (its values exact in TF32; transformers rounds its logits to 16
  // bits): the loss's GEMMs on TF32 tensor cores on CUDA
  const nn::Linear& head = m.lm_head.lin;
  const bool tf32 = head.format() == nn::WeightFormat::Fp &&
                    (head.weight().dtype() == DType::BF16 || head.weight().dtype() == DType::F16);
  const ops::HeadLoss hl = ops::cross_entropy_head_backward(*p.ctx, xf, head_w, tg, softcap, o.vocab_chunk,
                                                            o.grad_scale, dxf, tf32);
  res.loss_sum = hl.loss_sum;
  res.n_targets = hl.n_targets;
  if (!grads) return res;
  Tensor dh = p.rows(R, C);
  p.norm_bwd(m.final_norm, h, dxf, dh);
  for (size_t li = nl; li-- > 0;) {
    switch (policy(li)) {
      case Recompute::None:
        p.layer_bwd(li, cache[li], dh);
        break;
      case Recompute::Selective: {
        LayerCache full = p.restore_mlp(li, cache[li]);
        p.layer_bwd(li, full, dh, &cache[li]);
        break;
      }
      case Recompute::Full: {
        LayerCache full;
        p.layer_fwd(li, cache[li].h_in, full);
        p.layer_bwd(li, full, dh);
        break;
      }
    }
    cache[li] = LayerCache{};  // free as we go
  }
  // The pass's adapter gradients, copied to the host and added to the step's.
  for (const auto& [nl_ptr, dg] : dgrads) {
    LoraGrad& g = (*grads)[nl_ptr];
    if (g.dA.defined()) continue;  // accumulated in place
    if (g.A.empty()) g.A.assign(size_t(dg.A.numel()), 0.0f), g.B.assign(size_t(dg.B.numel()), 0.0f);
    const Tensor a = dg.A.to(Device::cpu()), bb = dg.B.to(Device::cpu());
    for (size_t i = 0; i < g.A.size(); ++i) g.A[i] += a.data<float>()[i];
    for (size_t i = 0; i < g.B.size(); ++i) g.B[i] += bb.data<float>()[i];
  }
  return res;
}

}  // namespace

int64_t count_targets(const TokenBatch& b) {
  int64_t n = 0;
  for (int64_t t : targets_of(b)) n += t != -100;
  return n;
}

Tensor head_weight(const CausalLM::Impl& m) {
  const nn::Linear& l = m.lm_head.lin;
  if (!l.device().is_cpu()) {
    // a 16-bit head with a 16-bit compute dtype on CUDA: the loss computes in the head's dtype
    // as bitsandbytes' training under autocast does (ops::cross_entropy_head_backward)
    const DType wd = l.format() == nn::WeightFormat::Fp ? l.weight().dtype() : DType::F32;
    if ((wd == DType::BF16 || wd == DType::F16) && m.cache_dtype(m.device) != DType::F32 &&
        l.weight().is_contiguous())
      return l.weight();
    if (l.format() == nn::WeightFormat::Fp && l.weight().dtype() == DType::F32 && l.weight().is_contiguous())
      return l.weight();
    // converted or dequantized once on the host (the conversions are host code), then moved back
    const nn::Linear h = l.to(Device::cpu());
    const Tensor w =
        h.format() == nn::WeightFormat::Fp ? f32(h.weight()).contiguous() : h.traits().dequantize(h);
    return w.to(l.device());
  }
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
