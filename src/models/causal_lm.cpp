// The generic decoder forward pass (one sequence or a batch of equal-length ones, KV caches),
// greedy generation, perplexity, the module list and the memory footprint. Everything
// architecture-specific comes from the ArchSpec and ModelConfig the loader filled in.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <span>

#include "models/causal_lm_impl.h"
#include "nibble/error.h"
#include "nibble/thread_pool.h"
#include "ops/nn_ops.h"

namespace nibble {

using detail::str;

CausalLM::CausalLM() : impl_(std::make_unique<Impl>()) {}
CausalLM::~CausalLM() = default;
CausalLM::CausalLM(CausalLM&&) noexcept = default;
CausalLM& CausalLM::operator=(CausalLM&&) noexcept = default;

const ModelConfig& CausalLM::config() const { return impl_->config; }
const GenerationConfig& CausalLM::generation_config() const { return impl_->generation; }
const std::optional<BitsAndBytesConfig>& CausalLM::quantization_config() const { return impl_->qc; }
Device CausalLM::device() const { return impl_->device; }
const HfDeviceMap& CausalLM::hf_device_map() const { return impl_->device_map; }

namespace {
Tensor moved(const Tensor& t, Device d) {
  return t.defined() ? t.to(d) : t;
}
void move_norm(Norm& n, Device d) {
  n.w = moved(n.w, d);
  n.b = moved(n.b, d);
}
}  // namespace

// Each module to its device of p, tensor by tensor (each host view of the mmap'd file copied up
// and released as the Linear is replaced; modules already there stay as they are).
void CausalLM::Impl::to_devices(const models::DevicePlan& p) {
  // the same tensor (not merely the same storage: every weight of a checkpoint file views one
  // mmap'd storage, so an untied head shares it with the embedding too)
  const bool head_is_embed = lm_head.lin.weight().data_ptr() == embed.data_ptr() &&
                             lm_head.lin.weight().shape() == embed.shape() && lm_head.lin.weight().dtype() == embed.dtype();
  embed = moved(embed, p.embed);
  pos_embed = moved(pos_embed, p.pos_embed);
  move_norm(embed_norm, p.embed_norm);
  move_norm(final_norm, p.final_norm);
  for (size_t i = 0; i < layers.size(); ++i) {
    DecoderLayer& L = layers[i];
    const Device dev = p.layers[i];
    for (Norm* n : {&L.attn_norm, &L.mlp_norm, &L.post_attn_norm, &L.post_mlp_norm, &L.q_norm, &L.k_norm})
      move_norm(*n, dev);
    for (auto& l : L.qkv) l.lin = l.lin.to(dev);
    L.o.lin = L.o.lin.to(dev);
    for (auto& l : L.mlp) l.lin = l.lin.to(dev);
    // one copy of the slopes per device, shared by its layers
    L.alibi_slopes = i > 0 && p.layers[i - 1] == dev ? layers[i - 1].alibi_slopes : moved(alibi_slopes, dev);
  }
  // a tied head stays one tensor with the embedding where both live on one device (a head placed
  // elsewhere gets its own copy there)
  lm_head.lin = head_is_embed && p.lm_head == p.embed
                    ? nn::Linear::fp(embed, moved(lm_head.lin.bias(), p.lm_head))
                    : lm_head.lin.to(p.lm_head);
  device = p.embed;
  place = p;
}

DType CausalLM::Impl::cache_dtype(Device d) const {
  return d.is_cpu() ? DType::F32 : (qc && qc->load_in_4bit ? qc->compute_dtype() : DType::F32);
}

std::unique_ptr<KVCache> CausalLM::new_cache(int64_t capacity) const { return impl_->make_cache(capacity); }

std::unique_ptr<KVCache> CausalLM::Impl::make_cache(int64_t capacity) const {
  auto c = std::make_unique<KVCache>();
  if (rope) c->rope.emplace(*rope);
  if (capacity > 0) {
    c->fixed_ = true;
    allocate_cache(*c, capacity);
  }
  return c;
}

void CausalLM::Impl::ensure_capacity(KVCache& cache, int64_t needed) const {
  if (needed <= cache.capacity_) return;
  if (cache.fixed_)
    throw ShapeError(str("forward: the KV cache holds ", cache.capacity_, " positions, ", needed,
                         " are needed (make it with new_cache(capacity) large enough)"));
  allocate_cache(cache, std::max<int64_t>(needed, std::max<int64_t>(64, cache.capacity_ * 2)));
}

// Each layer's keys and values on the layer's device, in its cache dtype.
void CausalLM::Impl::allocate_cache(KVCache& cache, int64_t cap) const {
  for (size_t l = 0; l < layers.size(); ++l) {
    const Device dev = place.layers[l];
    const DType dt = cache_dtype(dev);
    Tensor k = Tensor::empty({cap, n_kv_heads, head_dim}, dt, dev);  // [cap, Hkv, D]
    Tensor v = Tensor::empty({cap, n_kv_heads, head_dim}, dt, dev);
    if (cache.len_ > 0) {
      size_t bytes = size_t(dtype_nbytes(dt, cache.len_ * n_kv_heads * head_dim));
      copy_bytes(k.data_ptr(), dev, cache.k_[l].data_ptr(), dev, bytes);
      copy_bytes(v.data_ptr(), dev, cache.v_[l].data_ptr(), dev, bytes);
    }
    if (cache.k_.size() <= l) {
      cache.k_.push_back(k);
      cache.v_.push_back(v);
    } else {
      cache.k_[l] = k;
      cache.v_[l] = v;
    }
  }
  cache.capacity_ = cap;
}

namespace {

// A host vector as a tensor on dev.
template <typename T>
Tensor upload(const std::vector<T>& v, DType dt, Device dev) {
  Tensor t = Tensor::from_vector({int64_t(v.size())}, dt, v);
  return dev.is_cpu() ? t : t.to(dev);
}

Tensor empty_like_rows(int64_t R, int64_t C, Device dev) {
  return Tensor::empty({R, C}, DType::F32, dev);
}

}  // namespace

// The per-row inputs of a forward call: stacked ids and positions (checked on the host), each
// row's rope cos/sin from its own sequence's rope state, caches grown to fit.
Step CausalLM::Impl::plan_host(const std::vector<std::vector<int64_t>>& batch,
                               std::span<KVCache* const> caches, bool kv) const {
  const int64_t B = int64_t(batch.size());
  if (B == 0) throw ShapeError("forward: empty batch");
  if (int64_t(caches.size()) != B) throw InternalError(str("forward: ", caches.size(), " caches for a batch of ", B));
  Step st;
  st.ctx = &ExecContext::current(device);
  const int64_t V = embed.size(0);
  for (int64_t b = 0; b < B; ++b) {
    const auto& seq = batch[size_t(b)];
    KVCache* cache = caches[size_t(b)];
    if (!cache) throw ShapeError(str("forward: cache ", b, " is null"));
    if (seq.empty()) throw ShapeError(b == 0 && B == 1 ? "forward: no input ids" : str("forward: sequence ", b, " has no ids"));
    Segment sg{st.R, int64_t(seq.size()), cache->len_, cache};
    if (kv) ensure_capacity(*cache, sg.p0 + sg.T);
    for (int64_t t = 0; t < sg.T; ++t) {
      const int64_t id = seq[size_t(t)];
      if (id < 0 || id >= V) throw ShapeError(str("index ", id, " is outside the embedding of ", V, " rows"));
      st.ids.push_back(id);
      st.pos.push_back(sg.p0 + t);
    }
    st.R += sg.T;
    st.segs.push_back(sg);
  }
  if (spec->pos == models::PosKind::Rope) {
    // each sequence's rope state follows its own length (dynamic rope, longrope)
    std::vector<float>& cos = st.cos_h;
    std::vector<float>& sin = st.sin_h;
    for (const Segment& sg : st.segs) {
      const RopeTables& rt = sg.cache->rope->update(sg.p0 + sg.T - 1);
      st.rot_dim = rt.rot_dim;
      const size_t half = size_t(rt.rot_dim / 2), at = cos.size();
      cos.resize(at + size_t(sg.T) * half);
      sin.resize(at + size_t(sg.T) * half);
      rope_cos_sin(rt, st.pos.data() + sg.row0, sg.T, cos.data() + at, sin.data() + at);
    }
  }
  return st;
}

// plan_host's step with its inputs on the embedding's device, and a view with them on each
// other device of a split model.
Step CausalLM::Impl::plan(const std::vector<std::vector<int64_t>>& batch, std::span<KVCache* const> caches,
                          bool kv) const {
  Step st = plan_host(batch, caches, kv);
  auto upload_inputs = [&](Step& s) {
    const Device d = s.ctx->device();
    s.ids_dev = upload(s.ids, DType::I64, d);
    if (spec->pos == models::PosKind::Rope) {
      const int64_t half = s.rot_dim / 2;
      s.cos = upload(s.cos_h, DType::F32, d).view({s.R, half});
      s.sin = upload(s.sin_h, DType::F32, d).view({s.R, half});
    }
  };
  upload_inputs(st);
  for (const Device d : place.devices()) {
    if (d == device) continue;
    Step v = st;
    v.ctx = &ExecContext::current(d);
    upload_inputs(v);
    st.views.push_back(std::move(v));
  }
  return st;
}

const Step& Step::on(Device d) const {
  if (ctx->device() == d) return *this;
  for (const Step& v : views)
    if (v.ctx->device() == d) return v;
  throw InternalError(str("forward: the step has no view on ", d.str()));
}

void CausalLM::Impl::norm_into(const Norm& n, const Tensor& x, const Tensor& out, const Step& st) const {
  if (spec->norm == models::NormKind::RMS)
    ops::rms_norm(*st.ctx, x, n.w, float(config.norm_eps), spec->norm_unit_offset, out);
  else
    ops::layer_norm(*st.ctx, x, n.w, n.b, float(config.norm_eps), out);
}

// h += r, then out = norm(h): fused into one pass for RMSNorm.
void CausalLM::Impl::add_norm_into(const Norm& n, const Tensor& h, const Tensor& r, const Tensor& out,
                                   const Step& st) const {
  if (spec->norm == models::NormKind::RMS) {
    ops::add_rms_norm_(*st.ctx, h, r, n.w, float(config.norm_eps), spec->norm_unit_offset, out);
    return;
  }
  ops::add_(*st.ctx, h, r);
  norm_into(n, h, out, st);
}

// ids [R] -> h [R, C]: token embeddings (times sqrt(C) rounded to f32 where the architecture
// scales them), plus learned positions, then the embedding norm (Bloom); each on its module's
// device (h follows them).
Tensor CausalLM::Impl::embed_block(const Step& st0) const {
  const int64_t C = config.hidden_size;
  const Step& st = st0.on(place.embed);
  Tensor h = empty_like_rows(st.R, C, place.embed);  // [R, C]
  const float scale = spec->scale_embeddings ? std::sqrt(float(C)) : 1.0f;
  ops::embedding(*st.ctx, embed, st.ids_dev, 0, scale, h);
  if (pos_embed.defined()) {
    const Step& ps = st0.on(place.pos_embed);
    const int64_t P = pos_embed.size(0);
    for (int64_t p : st.pos)
      if (p + spec->pos_offset < 0 || p + spec->pos_offset >= P)
        throw ShapeError(str("position ", p, " is outside the position embedding of ", P, " rows"));
    Tensor pe = empty_like_rows(st.R, C, place.pos_embed);  // [R, C]
    ops::embedding(*ps.ctx, pos_embed,
                   ps.device_pos ? ps.seq_pos : upload(st.pos, DType::I64, place.pos_embed), spec->pos_offset,
                   1.0f, pe);
    h = moved(h, place.pos_embed);
    ops::add_(*ps.ctx, h, pe);
  }
  if (embed_norm.defined()) {
    const Step& ns = st0.on(place.embed_norm);
    h = moved(h, place.embed_norm);
    Tensor o = empty_like_rows(st.R, C, place.embed_norm);
    norm_into(embed_norm, h, o, ns);
    h = o;
  }
  return h;
}

// x [R, C] (normed) -> o [R, C]: q/k/v projections (separate, one fused [q | k | v], or fused
// per head [q_h | k_h | v_h]), q/k norms, rope, each sequence's K/V appended to its cache and
// attended over, then the output projection (and Gemma-2's post-attention norm).
Tensor CausalLM::Impl::attention_block(const Step& st, size_t li, const Tensor& x_in,
                                       const ops::RmsNormInput* in) const {
  const DecoderLayer& L = layers[li];
  const models::ArchSpec& s = *spec;
  ExecContext& ctx = *st.ctx;
  const Device dev = ctx.device();  // the layer's
  const int64_t R = st.R, D = head_dim, Hq = n_heads, Hkv = n_kv_heads, C = config.hidden_size;
  Tensor q = empty_like_rows(R, Hq * D, dev), k = empty_like_rows(R, Hkv * D, dev),
         v = empty_like_rows(R, Hkv * D, dev);  // [R, H * D] each
  if (in && !qkv_takes_norm(L))
    throw InternalError("attention_block: a norm input the q/k/v group cannot take");
  const Tensor& x = x_in;  // undefined with `in`
  if (L.qkv.size() == 3) {
    const nn::Linear* ls[] = {&L.qkv[0].lin, &L.qkv[1].lin, &L.qkv[2].lin};
    const Tensor outs[] = {q, k, v};
    if (in)
      nn::forward_group(ctx, *in, ls, outs);  // the norm inside the same launch on CUDA
    else
      nn::forward_group(ctx, x, ls, outs);  // one launch on CUDA for 4-bit q, k, v
    for (int i = 0; i < 3; ++i)
      if (L.qkv[size_t(i)].lora.defined()) nn::lora_add(ctx, L.qkv[size_t(i)].lora, x, outs[i]);
  } else if (s.qkv == models::QkvKind::Concat) {
    Tensor y = empty_like_rows(R, (Hq + 2 * Hkv) * D, dev);  // [R, (Hq + 2 Hkv) D]
    L.qkv[0].forward(ctx, x, y);
    ops::copy_(ctx, y.slice(1, 0, Hq * D), q);
    ops::copy_(ctx, y.slice(1, Hq * D, (Hq + Hkv) * D), k);
    ops::copy_(ctx, y.slice(1, (Hq + Hkv) * D, (Hq + 2 * Hkv) * D), v);
  } else {  // per head [q_h | k_h | v_h] (Hq == Hkv)
    Tensor y = empty_like_rows(R, Hq * 3 * D, dev);  // [R, H * 3D]
    L.qkv[0].forward(ctx, x, y);
    Tensor yh = y.view({R * Hq, 3 * D});
    ops::copy_(ctx, yh.slice(1, 0, D), q.view({R * Hq, D}));
    ops::copy_(ctx, yh.slice(1, D, 2 * D), k.view({R * Hkv, D}));
    ops::copy_(ctx, yh.slice(1, 2 * D, 3 * D), v.view({R * Hkv, D}));
  }
  if (L.q_norm.defined()) {
    Tensor qn = empty_like_rows(R * Hq, D, dev), kn = empty_like_rows(R * Hkv, D, dev);
    ops::rms_norm(ctx, q.view({R * Hq, D}), L.q_norm.w, float(config.norm_eps), s.norm_unit_offset, qn);
    ops::rms_norm(ctx, k.view({R * Hkv, D}), L.k_norm.w, float(config.norm_eps), s.norm_unit_offset, kn);
    q = qn.view({R, Hq * D});
    k = kn.view({R, Hkv * D});
  }
  Tensor q3 = q.view({R, Hq, D}), k3 = k.view({R, Hkv, D});
  const bool roped = s.pos == models::PosKind::Rope;
  const bool one_seq = st.segs.size() == 1;  // rope and the KV-cache write as one op
  // a device-position step of several sequences (decode_graph.cpp): all of them in one op each
  const bool batched = st.device_pos && !one_seq;
  if (batched && !st.kv_table.defined())
    throw InternalError("attention_block: a batched device-position step without its K/V table");
  if (roped && !one_seq && !batched) {
    ops::apply_rope_(ctx, q3, st.cos, st.sin, st.rot_dim);
    ops::apply_rope_(ctx, k3, st.cos, st.sin, st.rot_dim);
  }
  auto rope_kv = [&](const Tensor& kc, const Tensor& vc, const Tensor& row0, int64_t p0) {
    ops::rope_kv_write_(ctx, q3, k3, v, roped ? st.cos : Tensor(), roped ? st.sin : Tensor(), roped ? st.rot_dim : 0,
                        kc, vc, row0, p0);
  };
  ops::AttentionOptions ao;
  ao.scale = attn_scale;
  if (config.scale_attn_by_inverse_layer_idx) ao.scale /= float(li + 1);
  if (L.sliding && config.sliding_window) ao.sliding_window = *config.sliding_window;
  ao.softcap = attn_softcap;
  ao.alibi_slopes = L.alibi_slopes;
  Tensor a = empty_like_rows(R, Hq * D, dev);  // [R, Hq * D]
  if (batched) {                       // one row a sequence: the caches through the layer's address table
    const Segment* big = &st.segs[0];  // the longest cache sizes the attention's splits
    for (const Segment& sg : st.segs)
      if (sg.cache->capacity_ > big->cache->capacity_) big = &sg;
    KVCache& c0 = *big->cache;
    const Tensor tab = st.kv_table.slice(0, int64_t(li), int64_t(li) + 1).view({2, R});
    ops::rope_kv_write_(ctx, q3, k3, v, roped ? st.cos : Tensor(), roped ? st.sin : Tensor(),
                        roped ? st.rot_dim : 0, c0.k_[li].view({c0.capacity_, Hkv * D}),
                        c0.v_[li].view({c0.capacity_, Hkv * D}), st.seq_pos, 0, tab);
    ao.q_pos = st.seq_pos;
    ao.kv_table = tab;
    ops::attention(ctx, q3, c0.k_[li], c0.v_[li], ao, a.view({R, Hq, D}));
  } else {
    for (const Segment& sg : st.segs) {
      // the KV-cache write: rows of this sequence into positions [p0, p0 + T), in the cache dtype
      KVCache& cache = *sg.cache;
      Tensor kc = cache.k_[li].view({cache.capacity_, Hkv * D}),
             vc = cache.v_[li].view({cache.capacity_, Hkv * D});
      Tensor kk, vv;
      if (st.device_pos) {  // one sequence, its position read on the device: the whole cache, q_pos
        ao.q_pos = st.seq_pos;
        rope_kv(kc, vc, ao.q_pos, 0);
        kk = cache.k_[li], vv = cache.v_[li];
      } else {
        if (one_seq) {
          rope_kv(kc, vc, Tensor(), sg.p0);
        } else {
          ops::copy_(ctx, k.slice(0, sg.row0, sg.row0 + sg.T), kc.slice(0, sg.p0, sg.p0 + sg.T));
          ops::copy_(ctx, v.slice(0, sg.row0, sg.row0 + sg.T), vc.slice(0, sg.p0, sg.p0 + sg.T));
        }
        ao.q_offset = sg.p0;
        kk = cache.k_[li].slice(0, 0, sg.p0 + sg.T), vv = cache.v_[li].slice(0, 0, sg.p0 + sg.T);
      }
      ops::attention(ctx, q3.slice(0, sg.row0, sg.row0 + sg.T), kk, vv, ao,
                     a.slice(0, sg.row0, sg.row0 + sg.T).view({sg.T, Hq, D}));
    }
  }
  Tensor o = empty_like_rows(R, C, dev);  // [R, C]
  L.o.forward(ctx, a, o);
  if (L.post_attn_norm.defined()) {
    Tensor on = empty_like_rows(R, C, dev);
    norm_into(L.post_attn_norm, o, on, st);
    o = on;
  }
  return o;
}

// x [R, C] (normed) -> [R, C]: act(gate) * up -> down (separate or fused gate_up), or
// act(up) -> down.
Tensor CausalLM::Impl::mlp_block(const Step& st, size_t li, const Tensor& x_in,
                                 const ops::RmsNormInput* in) const {
  const DecoderLayer& L = layers[li];
  ExecContext& ctx = *st.ctx;
  const Device dev = ctx.device();  // the layer's
  const int64_t R = st.R, C = config.hidden_size;
  Tensor out = empty_like_rows(R, C, dev);  // [R, C]
  if (in && !mlp_takes_norm(L)) throw InternalError("mlp_block: a norm input the gate/up pair cannot take");
  const Tensor& x = x_in;  // undefined with `in`
  switch (spec->mlp_kind) {
    case models::MlpKind::Gated: {
      const int64_t F = L.mlp[0].lin.out_features();
      Tensor g = empty_like_rows(R, F, dev), u = empty_like_rows(R, F, dev);  // [R, F]
      if (!L.mlp[0].lora.defined() && !L.mlp[1].lora.defined()) {
        Tensor a = empty_like_rows(R, F, dev);  // act(gate) * up: one launch on CUDA for 4-bit
        if (in)
          nn::forward_gated(ctx, *in, L.mlp[0].lin, L.mlp[1].lin, act, g, u, a);  // and the norm
        else
          nn::forward_gated(ctx, x, L.mlp[0].lin, L.mlp[1].lin, act, g, u, a);
        L.mlp[2].forward(ctx, a, out);
        break;
      }
      L.mlp[0].forward(ctx, x, g);
      L.mlp[1].forward(ctx, x, u);
      ops::gated_activation(ctx, g, u, act, g);
      L.mlp[2].forward(ctx, g, out);
      break;
    }
    case models::MlpKind::GatedFused: {
      const int64_t F = L.mlp[0].lin.out_features() / 2;
      Tensor y = empty_like_rows(R, 2 * F, dev), a = empty_like_rows(R, F, dev);  // [R, 2F], [R, F]
      L.mlp[0].forward(ctx, x, y);
      ops::gated_activation(ctx, y.slice(1, 0, F), y.slice(1, F, 2 * F), act, a);
      L.mlp[1].forward(ctx, a, out);
      break;
    }
    case models::MlpKind::Plain: {
      Tensor u = empty_like_rows(R, L.mlp[0].lin.out_features(), dev);  // [R, F]
      L.mlp[0].forward(ctx, x, u);
      ops::activate_(ctx, u, act);
      L.mlp[1].forward(ctx, u, out);
      break;
    }
  }
  return out;
}

// The norm goes into a launch only where the grouped 4-bit q/k/v or the gated gate/up pair
// takes it (no LoRA: its A x needs x itself).
bool CausalLM::Impl::qkv_takes_norm(const DecoderLayer& L) const {
  return L.qkv.size() == 3 && L.qkv[0].lin.is_4bit() && !L.qkv[0].lora.defined() &&
         !L.qkv[1].lora.defined() && !L.qkv[2].lora.defined();
}
bool CausalLM::Impl::mlp_takes_norm(const DecoderLayer& L) const {
  return spec->mlp_kind == models::MlpKind::Gated && L.mlp[0].lin.is_4bit() && !L.mlp[0].lora.defined() &&
         !L.mlp[1].lora.defined();
}

bool CausalLM::Impl::fused_norms(const Step& st) const {
  // NIBBLE_FUSED_NORM=0 (benchmarks): the norms as separate launches
  static const bool off = [] {
    const char* v = std::getenv("NIBBLE_FUSED_NORM");
    return v != nullptr && std::strcmp(v, "0") == 0;
  }();
  return !off && spec->norm == models::NormKind::RMS && !parallel_residual &&
         ops::rms_norm_input_fuses(*st.ctx, st.R, config.hidden_size);
}

// h [R, C] (in place, or replaced by the residual sum the fused norms write): pre-norm attention
// and MLP with residuals (or GPT-NeoX/Phi's parallel
// residual: h + attn(norm1 h) + mlp(norm2 h)), Gemma-2's post-norms. The MLP's output is left
// in `pending` (h + pending is the layer's output) so the next layer adds it inside its first
// norm; pending is undefined where the layer added everything itself.
void CausalLM::Impl::decoder_layer(const Step& st, size_t li, Tensor& h, Tensor& pending) const {
  const DecoderLayer& L = layers[li];
  ExecContext& ctx = *st.ctx;
  const Device dev = ctx.device();  // the layer's
  const int64_t R = st.R, C = config.hidden_size;
  Tensor x = empty_like_rows(R, C, dev);  // [R, C]
  const bool fuse = fused_norms(st);
  const bool fuse_attn = fuse && qkv_takes_norm(L), fuse_mlp = fuse && mlp_takes_norm(L);
  const float eps = float(config.norm_eps);
  Tensor o;
  if (pending.defined() && fuse_attn) {  // h + pending and its norm inside the q/k/v launch
    Tensor h2 = empty_like_rows(R, C, dev);
    const ops::RmsNormInput in{h, pending, L.attn_norm.w, eps, spec->norm_unit_offset, h2};
    o = attention_block(st, li, Tensor(), &in);
    h = h2;
  } else {
    if (pending.defined())
      add_norm_into(L.attn_norm, h, pending, x, st);
    else
      norm_into(L.attn_norm, h, x, st);
    o = attention_block(st, li, x);
  }
  pending = Tensor();
  if (parallel_residual) {
    norm_into(L.mlp_norm, h, x, st);
    Tensor mo = mlp_block(st, li, x);
    ops::add_(ctx, mo, o);  // transformers: mlp_output + attn_output + residual
    ops::add_(ctx, mo, h);
    h = mo;
    return;
  }
  Tensor mo;
  if (fuse_mlp) {  // h + o and its norm inside the gate/up launch
    Tensor h2 = empty_like_rows(R, C, dev);
    const ops::RmsNormInput in{h, o, L.mlp_norm.w, eps, spec->norm_unit_offset, h2};
    mo = mlp_block(st, li, Tensor(), &in);
    h = h2;
  } else {
    add_norm_into(L.mlp_norm, h, o, x, st);
    mo = mlp_block(st, li, x);
  }
  if (L.post_mlp_norm.defined()) {
    Tensor mn = empty_like_rows(R, C, dev);
    norm_into(L.post_mlp_norm, mo, mn, st);
    mo = mn;
  }
  pending = mo;
}

// Every decoder layer over h [R, C] (the last one's pending residual added), each on its
// device: h and the pending residual cross to the next layer's device at a boundary.
void CausalLM::Impl::decoder_layers(const Step& st, Tensor& h) const {
  Tensor pending;
  for (size_t li = 0; li < layers.size(); ++li) {
    const Device d = place.layers[li];
    h = moved(h, d);
    pending = moved(pending, d);
    decoder_layer(st.on(d), li, h, pending);
  }
  if (pending.defined()) ops::add_(*st.on(h.device()).ctx, h, pending);
}

// h [R, C] -> logits [R or B, V] (or [B, V] of each sequence's last row): final norm, output head,
// final soft-capping; the norm on its device, the head on its own.
Tensor CausalLM::Impl::head_block(const Step& st0, const Tensor& h_in, bool last_only,
                                  const Tensor& out) const {
  const Step& st = st0.on(place.final_norm);
  ExecContext& ctx = *st.ctx;
  const Device dev = place.final_norm;
  const int64_t C = config.hidden_size, V = lm_head.lin.out_features();
  const Tensor h = moved(h_in, dev);
  Tensor rows = h;
  if (last_only && int64_t(st.segs.size()) != st.R) {
    rows = empty_like_rows(int64_t(st.segs.size()), C, dev);  // [B, C]: the batch concat of last rows
    for (size_t b = 0; b < st.segs.size(); ++b) {
      const Segment& sg = st.segs[b];
      ops::copy_(ctx, h.slice(0, sg.row0 + sg.T - 1, sg.row0 + sg.T), rows.slice(0, int64_t(b), int64_t(b) + 1));
    }
  }
  Tensor x = empty_like_rows(rows.size(0), C, dev);
  norm_into(final_norm, rows, x, st);
  const Step& hs = st0.on(place.lm_head);
  x = moved(x, place.lm_head);
  Tensor logits = out.defined() ? out : empty_like_rows(rows.size(0), V, place.lm_head);  // [R or B, V]
  lm_head.forward(*hs.ctx, x, logits);
  if (final_softcap) ops::softcap_(*hs.ctx, logits, *final_softcap);
  return logits;
}

Tensor CausalLM::Impl::forward(const std::vector<int64_t>& ids, KVCache& cache, bool last_only) const {
  KVCache* caches[] = {&cache};
  return forward_batch({ids}, caches, last_only);
}

// Sequences stacked as rows, as transformers runs input_ids [B, T]: the per-token work
// (embeddings, norms, every Linear, the MLP) sees all rows at once and only attention is per
// sequence. Row-wise ops give the same result either way, but LLM.int8 picks its outlier
// columns over all rows of the input, so an int8 model's logits depend on the batch.
Tensor CausalLM::Impl::forward_batch(const std::vector<std::vector<int64_t>>& batch,
                                     std::span<KVCache* const> caches, bool last_only) const {
  if (graph_eligible(batch, last_only)) return decode_graphed(batch, caches);
  Step st = plan(batch, caches);
  Tensor h = embed_block(st);  // [R, C]
  decoder_layers(st, h);
  for (const Segment& sg : st.segs) sg.cache->len_ = sg.p0 + sg.T;
  return head_block(st, h, last_only);
}

namespace {
Tensor to_host(const Tensor& t) {
  return t.device().is_cpu() ? t : t.to(Device::cpu());
}
}  // namespace

Tensor CausalLM::forward(const std::vector<int64_t>& ids, KVCache* cache) const {
  if (cache) return to_host(impl_->forward(ids, *cache));
  auto fresh = impl_->make_cache(int64_t(ids.size()));
  return to_host(impl_->forward(ids, *fresh));
}

Tensor CausalLM::forward_last(const std::vector<int64_t>& ids, KVCache* cache) const {
  if (cache) return to_host(impl_->forward(ids, *cache, true));
  auto fresh = impl_->make_cache(int64_t(ids.size()));
  return to_host(impl_->forward(ids, *fresh, true));
}

namespace {
// The first maximum of each row of logits [R, V], found on their device; the R ids on the host.
std::vector<int64_t> argmax_ids(const Tensor& logits) {
  ExecContext& ctx = ExecContext::current(logits.device());
  Tensor best = Tensor::empty({logits.size(0)}, DType::I64, logits.device());
  ops::argmax_rows(ctx, logits, best);  // first maximum, as torch.argmax
  const Tensor h = to_host(best);
  return std::vector<int64_t>(h.data<int64_t>(), h.data<int64_t>() + h.numel());
}
}  // namespace

int64_t CausalLM::forward_last_argmax(const std::vector<int64_t>& ids, KVCache* cache) const {
  if (cache) return argmax_ids(impl_->forward(ids, *cache, true))[0];
  auto fresh = impl_->make_cache(int64_t(ids.size()));
  return argmax_ids(impl_->forward(ids, *fresh, true))[0];
}

Tensor CausalLM::forward_batch(const std::vector<std::vector<int64_t>>& batch) const {
  std::vector<std::unique_ptr<KVCache>> fresh;
  std::vector<KVCache*> caches;
  for (size_t b = 0; b < batch.size(); ++b) {
    if (b > 0 && batch[b].size() != batch[0].size())
      throw ShapeError(str("forward: sequence ", b, " has ", batch[b].size(), " ids, sequence 0 has ", batch[0].size(),
                           " (a batch needs equal lengths; no padding)"));
    fresh.push_back(impl_->make_cache(int64_t(batch[b].size())));
    caches.push_back(fresh.back().get());
  }
  Tensor logits = to_host(impl_->forward_batch(batch, caches));  // [B * T, V]
  return logits.view({int64_t(batch.size()), int64_t(batch.empty() ? 0 : batch[0].size()), logits.size(1)});
}

Tensor CausalLM::decode_batch(const std::vector<int64_t>& tokens, const std::vector<KVCache*>& caches) const {
  if (tokens.size() != caches.size())
    throw ShapeError(str("decode_batch: ", tokens.size(), " tokens for ", caches.size(), " caches"));
  if (tokens.empty()) throw ShapeError("decode_batch: empty batch");
  std::vector<std::vector<int64_t>> batch;
  for (int64_t t : tokens) batch.push_back({t});
  return to_host(impl_->forward_batch(batch, caches, true));  // [B, V]
}

std::vector<int64_t> CausalLM::decode_batch_argmax(const std::vector<int64_t>& tokens,
                                                   const std::vector<KVCache*>& caches) const {
  if (tokens.size() != caches.size())
    throw ShapeError(str("decode_batch_argmax: ", tokens.size(), " tokens for ", caches.size(), " caches"));
  if (tokens.empty()) throw ShapeError("decode_batch_argmax: empty batch");
  std::vector<std::vector<int64_t>> batch;
  for (int64_t t : tokens) batch.push_back({t});
  return argmax_ids(impl_->forward_batch(batch, caches, true));  // [B, V] where the head ran
}

std::vector<int64_t> CausalLM::generate_greedy(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                               bool stop_at_eos) const {
  std::vector<int64_t> out = prompt;
  auto cache = impl_->make_cache(int64_t(prompt.size()) + std::max<int64_t>(max_new_tokens, 1));
  Tensor logits = impl_->forward(prompt, *cache, true);  // [1, V] on the head's device
  for (int64_t n = 0; n < max_new_tokens; ++n) {
    const int64_t best = argmax_ids(logits)[0];  // one id crosses back
    out.push_back(best);
    if (stop_at_eos) {
      if (impl_->generation.is_eos(best)) break;
    }
    if (n + 1 < max_new_tokens) logits = impl_->forward({best}, *cache, true);
  }
  return out;
}

double CausalLM::mean_nll(const std::vector<int64_t>& ids) const {
  if (ids.size() < 2) throw ShapeError("mean_nll: needs at least two tokens");
  Tensor logits = forward(ids);
  const int64_t V = logits.size(1);
  double total = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data<float>() + int64_t(t) * V;
    total += ops::log_sum_exp(row, V) - double(row[ids[t + 1]]);
  }
  return total / double(ids.size() - 1);
}

}  // namespace nibble
