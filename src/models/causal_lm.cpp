// The generic decoder forward pass (one sequence or a batch of equal-length ones, KV caches),
// greedy generation, perplexity, the module list and the memory footprint. Everything
// architecture-specific comes from the ArchSpec and ModelConfig the loader filled in.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>

#include "models/causal_lm_impl.h"
#include "nibble/error.h"
#include "nibble/thread_pool.h"

namespace nibble {

using detail::str;

CausalLM::CausalLM() : impl_(std::make_unique<Impl>()) {}
CausalLM::~CausalLM() = default;
CausalLM::CausalLM(CausalLM&&) noexcept = default;
CausalLM& CausalLM::operator=(CausalLM&&) noexcept = default;

const ModelConfig& CausalLM::config() const { return impl_->config; }
const GenerationConfig& CausalLM::generation_config() const { return impl_->generation; }
const std::optional<BitsAndBytesConfig>& CausalLM::quantization_config() const { return impl_->qc; }

std::unique_ptr<KVCache> CausalLM::new_cache() const { return std::make_unique<KVCache>(); }

namespace {

// Columns [c0, c0 + n) of a row-major [T, N] tensor, as a contiguous [T, n] tensor.
Tensor columns(const Tensor& y, int64_t c0, int64_t n) {
  int64_t T = y.size(0), N = y.size(1);
  Tensor out = Tensor::empty({T, n}, DType::F32);
  for (int64_t t = 0; t < T; ++t) std::memcpy(out.data<float>() + t * n, y.data<float>() + t * N + c0, size_t(n) * 4);
  return out;
}

void add_(Tensor& a, const Tensor& b) {
  float* p = a.data<float>();
  const float* q = b.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) p[i] += q[i];
}

Tensor apply_norm(const Norm& n, const Tensor& x, const models::ArchSpec& spec, double eps) {
  if (spec.norm == models::NormKind::RMS) return ops::rms_norm(x, n.w, float(eps), spec.norm_unit_offset);
  return ops::layer_norm(x, n.w, n.b, float(eps));
}

// Rows of an embedding table (any float dtype) gathered to f32 [T, C].
Tensor gather_rows(const Tensor& table, const std::vector<int64_t>& rows, int64_t offset) {
  int64_t C = table.size(1), V = table.size(0), T = int64_t(rows.size());
  Tensor out = Tensor::empty({T, C}, DType::F32);
  for (int64_t t = 0; t < T; ++t) {
    int64_t r = rows[size_t(t)] + offset;
    if (r < 0 || r >= V) throw ShapeError(str("index ", rows[size_t(t)], " is outside the embedding of ", V, " rows"));
    for (int64_t c = 0; c < C; ++c) out.data<float>()[t * C + c] = load_as_f32(table.data_ptr(), table.dtype(), r * C + c);
  }
  return out;
}

}  // namespace

void CausalLM::Impl::ensure_capacity(KVCache& cache, int64_t needed) const {
  if (needed <= cache.capacity_) return;
  int64_t cap = std::max<int64_t>(needed, std::max<int64_t>(64, cache.capacity_ * 2));
  for (size_t l = 0; l < layers.size(); ++l) {
    Tensor k = Tensor::empty({cap, n_kv_heads, head_dim}, DType::F32);
    Tensor v = Tensor::empty({cap, n_kv_heads, head_dim}, DType::F32);
    if (cache.len_ > 0) {
      size_t bytes = size_t(cache.len_ * n_kv_heads * head_dim) * 4;
      std::memcpy(k.data_ptr(), cache.k_[l].data_ptr(), bytes);
      std::memcpy(v.data_ptr(), cache.v_[l].data_ptr(), bytes);
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

Tensor CausalLM::Impl::forward(const std::vector<int64_t>& ids, KVCache& cache) const {
  KVCache* caches[] = {&cache};
  return forward_batch({ids}, caches);
}

// B sequences of T tokens as one batch, as transformers runs input_ids [B, T]: the per-token
// work (embeddings, norms, every Linear, the MLP) sees all B * T rows at once and only the
// attention is per sequence. Row-wise ops give the same result either way, but LLM.int8 picks
// its outlier columns over all rows of the input, so an int8 model's logits depend on the batch.
Tensor CausalLM::Impl::forward_batch(const std::vector<std::vector<int64_t>>& batch,
                                     std::span<KVCache* const> caches) const {
  const models::ArchSpec& s = *spec;
  const ModelConfig& c = config;
  const int64_t B = int64_t(batch.size()), C = c.hidden_size, D = head_dim, Hq = n_heads, Hkv = n_kv_heads;
  if (B == 0) throw ShapeError("forward: empty batch");
  if (int64_t(caches.size()) != B) throw InternalError(str("forward: ", caches.size(), " caches for a batch of ", B));
  const int64_t T = int64_t(batch[0].size());
  if (T == 0) throw ShapeError("forward: no input ids");
  const int64_t p0 = caches[0]->len_;
  for (int64_t b = 0; b < B; ++b) {
    if (int64_t(batch[size_t(b)].size()) != T)
      throw ShapeError(str("forward: sequence ", b, " has ", batch[size_t(b)].size(), " ids, sequence 0 has ", T,
                           " (a batch needs equal lengths; no padding)"));
    if (caches[size_t(b)]->len_ != p0)
      throw ShapeError(str("forward: cache ", b, " holds ", caches[size_t(b)]->len_, " positions, cache 0 holds ", p0));
    ensure_capacity(*caches[size_t(b)], p0 + T);
  }
  const int64_t R = B * T;  // rows of every per-token tensor, sequence by sequence
  std::vector<int64_t> ids;
  ids.reserve(size_t(R));
  for (const auto& seq : batch) ids.insert(ids.end(), seq.begin(), seq.end());

  Tensor h = gather_rows(embed, ids, 0);  // [R, C]
  if (s.scale_embeddings) {
    // transformers multiplies by sqrt(hidden) rounded to the activation dtype (f32 here)
    float norm = std::sqrt(float(C));
    for (int64_t i = 0; i < h.numel(); ++i) h.data<float>()[i] *= norm;
  }
  std::vector<int64_t> pos(static_cast<size_t>(R));  // position of each row
  for (int64_t r = 0; r < R; ++r) pos[size_t(r)] = p0 + r % T;
  if (pos_embed.defined()) add_(h, gather_rows(pos_embed, pos, s.pos_offset));
  if (embed_norm.defined()) h = apply_norm(embed_norm, h, s, c.norm_eps);

  Tensor cos, sin;
  int64_t rot_dim = 0;
  if (s.pos == models::PosKind::Rope) {
    const RopeTables& rt = rope->update(p0 + T - 1);
    rot_dim = rt.rot_dim;
    int64_t half = rt.rot_dim / 2;
    cos = Tensor::empty({R, half}, DType::F32);
    sin = Tensor::empty({R, half}, DType::F32);
    rope_cos_sin(rt, pos.data(), R, cos.data<float>(), sin.data<float>());
  }

  for (size_t li = 0; li < layers.size(); ++li) {
    const DecoderLayer& L = layers[li];
    Tensor x = apply_norm(L.attn_norm, h, s, c.norm_eps);  // [R, C]
    Tensor q, k, v;
    if (L.qkv.size() == 3) {
      q = L.qkv[0].lin.forward(x);
      k = L.qkv[1].lin.forward(x);
      v = L.qkv[2].lin.forward(x);
    } else if (s.qkv == models::QkvKind::Concat) {
      Tensor y = L.qkv[0].lin.forward(x);  // [R, (Hq + 2 Hkv) D]
      q = columns(y, 0, Hq * D);
      k = columns(y, Hq * D, Hkv * D);
      v = columns(y, (Hq + Hkv) * D, Hkv * D);
    } else {  // per head [q_h | k_h | v_h]
      Tensor y = L.qkv[0].lin.forward(x);  // [R, H * 3D]
      q = Tensor::empty({R, Hq * D}, DType::F32);
      k = Tensor::empty({R, Hkv * D}, DType::F32);
      v = Tensor::empty({R, Hkv * D}, DType::F32);
      for (int64_t t = 0; t < R; ++t)
        for (int64_t hh = 0; hh < Hq; ++hh) {
          const float* src = y.data<float>() + t * Hq * 3 * D + hh * 3 * D;
          std::memcpy(q.data<float>() + (t * Hq + hh) * D, src, size_t(D) * 4);
          std::memcpy(k.data<float>() + (t * Hkv + hh) * D, src + D, size_t(D) * 4);
          std::memcpy(v.data<float>() + (t * Hkv + hh) * D, src + 2 * D, size_t(D) * 4);
        }
    }
    if (L.q_norm.defined()) {
      q = ops::rms_norm(q.view({R * Hq, D}), L.q_norm.w, float(c.norm_eps), s.norm_unit_offset);
      k = ops::rms_norm(k.view({R * Hkv, D}), L.k_norm.w, float(c.norm_eps), s.norm_unit_offset);
    }
    q = q.view({R, Hq, D});
    k = k.view({R, Hkv, D});
    if (s.pos == models::PosKind::Rope) {
      ops::apply_rope_(q, cos, sin, rot_dim);
      ops::apply_rope_(k, cos, sin, rot_dim);
    }
    // per sequence: append to its cache, then attend over everything it has cached
    ops::AttentionOptions ao;
    ao.scale = attn_scale;
    if (c.scale_attn_by_inverse_layer_idx) ao.scale /= float(li + 1);
    ao.q_offset = p0;
    if (L.sliding && c.sliding_window) ao.sliding_window = *c.sliding_window;
    ao.softcap = attn_softcap;
    if (!alibi_slopes.empty()) ao.alibi_slopes = alibi_slopes.data();
    Tensor a = B == 1 ? Tensor() : Tensor::empty({R, Hq, D}, DType::F32);  // [R, Hq, D]
    const size_t row = size_t(Hkv * D) * 4;
    for (int64_t b = 0; b < B; ++b) {
      KVCache& cache = *caches[size_t(b)];
      Tensor kb = k.slice(0, b * T, (b + 1) * T), vb = v.slice(0, b * T, (b + 1) * T);
      std::memcpy(cache.k_[li].data<float>() + p0 * Hkv * D, kb.data_ptr(), row * size_t(T));
      std::memcpy(cache.v_[li].data<float>() + p0 * Hkv * D, vb.data_ptr(), row * size_t(T));
      Tensor kk = cache.k_[li].slice(0, 0, p0 + T), vv = cache.v_[li].slice(0, 0, p0 + T);
      Tensor ab = ops::attention(q.slice(0, b * T, (b + 1) * T), kk, vv, ao);  // [T, Hq, D]
      if (B == 1)
        a = ab;
      else
        std::memcpy(a.data<float>() + b * T * Hq * D, ab.data_ptr(), size_t(T * Hq * D) * 4);
    }
    Tensor o = L.o.lin.forward(a.view({R, Hq * D}));
    if (L.post_attn_norm.defined()) o = apply_norm(L.post_attn_norm, o, s, c.norm_eps);

    auto mlp = [&](const Tensor& xin) {
      switch (s.mlp_kind) {
        case models::MlpKind::Gated: {
          Tensor g = L.mlp[0].lin.forward(xin), u = L.mlp[1].lin.forward(xin);
          return L.mlp[2].lin.forward(ops::gated_activation(g, u, act));
        }
        case models::MlpKind::GatedFused: {
          Tensor y = L.mlp[0].lin.forward(xin);
          int64_t F = y.size(1) / 2;
          return L.mlp[1].lin.forward(ops::gated_activation(columns(y, 0, F), columns(y, F, F), act));
        }
        case models::MlpKind::Plain:
        default: {
          Tensor u = L.mlp[0].lin.forward(xin);
          ops::activate_(u, act);
          return L.mlp[1].lin.forward(u);
        }
      }
    };
    if (parallel_residual) {
      Tensor mo = mlp(apply_norm(L.mlp_norm, h, s, c.norm_eps));
      add_(mo, o);  // transformers: mlp_output + attn_output + residual
      add_(mo, h);
      h = mo;
    } else {
      add_(h, o);
      Tensor mo = mlp(apply_norm(L.mlp_norm, h, s, c.norm_eps));
      if (L.post_mlp_norm.defined()) mo = apply_norm(L.post_mlp_norm, mo, s, c.norm_eps);
      add_(h, mo);
    }
  }
  for (KVCache* cache : caches) cache->len_ = p0 + T;
  h = apply_norm(final_norm, h, s, c.norm_eps);
  Tensor logits = lm_head.lin.forward(h);  // [R, V]
  if (final_softcap) {
    float cap = *final_softcap;
    for (int64_t i = 0; i < logits.numel(); ++i) logits.data<float>()[i] = std::tanh(logits.data<float>()[i] / cap) * cap;
  }
  return logits;
}

Tensor CausalLM::forward(const std::vector<int64_t>& ids, KVCache* cache) const {
  if (cache) return impl_->forward(ids, *cache);
  KVCache fresh;
  return impl_->forward(ids, fresh);
}

Tensor CausalLM::forward_batch(const std::vector<std::vector<int64_t>>& batch) const {
  std::vector<KVCache> fresh(batch.size());
  std::vector<KVCache*> caches;
  for (KVCache& c : fresh) caches.push_back(&c);
  Tensor logits = impl_->forward_batch(batch, caches);  // [B * T, V]
  return logits.view({int64_t(batch.size()), int64_t(batch[0].size()), logits.size(1)});
}

Tensor CausalLM::decode_batch(const std::vector<int64_t>& tokens, const std::vector<KVCache*>& caches) const {
  if (tokens.size() != caches.size())
    throw ShapeError(str("decode_batch: ", tokens.size(), " tokens for ", caches.size(), " caches"));
  if (tokens.empty()) throw ShapeError("decode_batch: empty batch");
  const int64_t V = impl_->lm_head.lin.out_features();
  Tensor out = Tensor::empty({int64_t(tokens.size()), V}, DType::F32);
  for (size_t b = 0; b < tokens.size(); ++b) {
    if (!caches[b]) throw ShapeError(str("decode_batch: cache ", b, " is null"));
    Tensor l = impl_->forward({tokens[b]}, *caches[b]);  // [1, V]
    std::memcpy(out.data<float>() + int64_t(b) * V, l.data_ptr(), size_t(V) * 4);
  }
  return out;
}

std::vector<int64_t> CausalLM::generate_greedy(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                               bool stop_at_eos) const {
  std::vector<int64_t> out = prompt;
  KVCache cache;
  Tensor logits = impl_->forward(prompt, cache);
  const int64_t V = logits.size(1);
  for (int64_t n = 0; n < max_new_tokens; ++n) {
    const float* last = logits.data<float>() + (logits.size(0) - 1) * V;
    int64_t best = std::max_element(last, last + V) - last;  // first maximum, as torch.argmax
    out.push_back(best);
    if (stop_at_eos) {
      if (impl_->generation.is_eos(best)) break;
    }
    if (n + 1 < max_new_tokens) logits = impl_->forward({best}, cache);
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
