// Rope inverse frequencies, one function per transformers rope type (modeling_rope_utils.py,
// ROPE_INIT_FUNCTIONS, plus the families' compute_default_rope_parameters). Each line mirrors
// one torch expression. The rules that make the numbers match:
//  - `python_float <op> f32_tensor` casts the Python float to float32 first (a wrapped scalar
//    does not take part in type promotion), then computes in float32;
//  - `x / tensor` is tensor.reciprocal() * x (Tensor.__rtruediv__), so 1.0 / t is an exact
//    float32 reciprocal and 2*pi / t is a reciprocal times float32(2*pi);
//  - arithmetic between Python numbers stays in double (Python floats).
#include "models/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "nibble/error.h"

namespace nibble {

namespace {

// torch.arange(0, dim, 2).float() / dim  — float32 [ceil(dim/2)]
std::vector<float> exponents(int64_t dim) {
  std::vector<float> e;
  for (int64_t i = 0; i < dim; i += 2) e.push_back(float(i) / float(dim));
  return e;
}

// base ** exponents: the Python float base is cast to float32, then a float32 pow.
std::vector<float> pow_base(double base, const std::vector<float>& e) {
  std::vector<float> out(e.size());
  const float b = float(base);
  for (size_t i = 0; i < e.size(); ++i) out[i] = std::pow(b, e[i]);
  return out;
}

// 1.0 / (base ** (arange(0, dim, 2) / dim))
std::vector<float> default_inv_freq(double base, int64_t dim) {
  std::vector<float> inv = pow_base(base, exponents(dim));
  for (float& x : inv) x = 1.0f / x;
  return inv;
}

const RopeParameters& rope_of(const ModelConfig& c) {
  if (!c.rope) throw ConfigError(c.origin + ": model_type '" + c.model_type + "' has no rotary embedding");
  return *c.rope;
}

// _compute_dynamic_ntk_parameters. At init (seq_len a Python int) the base arithmetic is in
// double; at run time dynamic_rope_update passes seq_len = max(position_ids) + 1, an int64
// tensor on the model's device, which turns the same expression into float32 tensor
// arithmetic. We follow CUDA there, where `t ** (dim / (dim - 2))` is powf with a float32
// exponent; torch's CPU kernel instead evaluates pow(double(t), exponent) and rounds, so a
// CPU-run transformers gives a base one ulp away and inv_freq values 1-2 ulp away.
std::vector<float> dynamic_inv_freq(const ModelConfig& c, int64_t dim, int64_t seq_len) {
  const RopeParameters& r = *c.rope;
  const double factor = *r.factor;
  const int64_t max_pos = c.max_position_embeddings;
  const double expo = double(dim) / double(dim - 2);
  if (seq_len <= max_pos) {
    double base = r.rope_theta * std::pow(factor * double(max_pos) / double(max_pos) - (factor - 1), expo);
    return default_inv_freq(base, dim);
  }
  float s = float(factor) * float(seq_len);  // factor * seq_len   (float32 tensor)
  s = s / float(max_pos);                    // / max_position_embeddings
  s = s - float(factor - 1);                 // - (factor - 1)
  s = std::pow(s, float(expo));              // ** (dim / (dim - 2))
  const float base = float(r.rope_theta) * s;
  std::vector<float> inv = exponents(dim);
  for (float& x : inv) x = 1.0f / std::pow(base, x);  // 0-d tensor ** tensor
  return inv;
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

// _compute_yarn_parameters
RopeTables yarn(const ModelConfig& c, int64_t dim) {
  const RopeParameters& r = *c.rope;
  const double base = r.rope_theta;
  const double orig = double(*r.original_max_position_embeddings);
  const double factor = r.factor ? *r.factor : double(c.max_position_embeddings) / orig;
  double attention_factor;
  if (r.attention_factor)
    attention_factor = *r.attention_factor;
  else if (r.mscale.value_or(0) != 0 && r.mscale_all_dim.value_or(0) != 0)  // Python truthiness
    attention_factor = yarn_get_mscale(factor, *r.mscale) / yarn_get_mscale(factor, *r.mscale_all_dim);
  else
    attention_factor = yarn_get_mscale(factor, 1);
  const double beta_fast = r.beta_fast.value_or(0) != 0 ? *r.beta_fast : 32;  // `.get(..) or 32`
  const double beta_slow = r.beta_slow.value_or(0) != 0 ? *r.beta_slow : 1;

  auto correction_dim = [&](double num_rotations) {
    return (double(dim) * std::log(orig / (num_rotations * 2 * std::numbers::pi))) / (2 * std::log(base));
  };
  double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
  if (r.truncate.value_or(true)) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;  // linear_ramp_factor: prevent singularity

  const std::vector<float> pos_freqs = pow_base(base, exponents(dim));
  const size_t n = pos_freqs.size();
  const float f_factor = float(factor), f_low = float(low), f_range = float(high - low);
  RopeTables t;
  t.inv_freq.resize(n);
  for (size_t i = 0; i < n; ++i) {
    // linear_ramp_factor(low, high, dim // 2); dim is even (ModelConfig checks), so n == dim // 2
    float ramp = (float(int64_t(i)) - f_low) / f_range;
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float extrap_factor = 1.0f - ramp;
    const float inv_extrap = 1.0f / pos_freqs[i];
    const float inv_interp = 1.0f / (f_factor * pos_freqs[i]);
    t.inv_freq[i] = inv_interp * (1.0f - extrap_factor) + inv_extrap * extrap_factor;
  }
  t.attention_scaling = float(attention_factor);
  return t;
}

// _compute_longrope_parameters
RopeTables longrope(const ModelConfig& c, int64_t dim, int64_t seq_len) {
  const RopeParameters& r = *c.rope;
  const double orig = double(*r.original_max_position_embeddings);
  const double factor = r.factor ? *r.factor : double(c.max_position_embeddings) / orig;
  double attention_factor;
  if (r.attention_factor)
    attention_factor = *r.attention_factor;
  else if (factor <= 1.0)
    attention_factor = 1.0;
  else
    attention_factor = std::sqrt(1 + std::log(factor) / std::log(orig));
  const std::vector<double>& ext = seq_len > 0 && double(seq_len) > orig ? r.long_factor : r.short_factor;
  const std::vector<float> p = pow_base(r.rope_theta, exponents(dim));
  RopeTables t;
  t.inv_freq.resize(p.size());
  for (size_t i = 0; i < p.size(); ++i) t.inv_freq[i] = 1.0f / (float(ext.at(i)) * p[i]);
  t.attention_scaling = float(attention_factor);
  return t;
}

// _compute_llama3_parameters
std::vector<float> llama3_inv_freq(const RopeParameters& r, int64_t dim) {
  std::vector<float> inv = default_inv_freq(r.rope_theta, dim);
  const double factor = *r.factor, low_ff = *r.low_freq_factor, high_ff = *r.high_freq_factor;
  const double old_ctx = double(*r.original_max_position_embeddings);
  const float low_wavelen = float(old_ctx / low_ff), high_wavelen = float(old_ctx / high_ff);
  const float f_factor = float(factor), f_two_pi = float(2 * std::numbers::pi);
  const float f_old_ctx = float(old_ctx), f_low_ff = float(low_ff), f_span = float(high_ff - low_ff);
  for (float& x : inv) {
    const float wavelen = (1.0f / x) * f_two_pi;             // 2 * math.pi / inv_freq
    float llama = wavelen > low_wavelen ? x / f_factor : x;  // torch.where(...)
    const float smooth = ((1.0f / wavelen) * f_old_ctx - f_low_ff) / f_span;
    const float smoothed = (1.0f - smooth) * llama / f_factor + smooth * llama;
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    x = medium ? smoothed : llama;
  }
  return inv;
}

}  // namespace

RopeTables rope_init(const ModelConfig& c, int64_t seq_len) {
  const RopeParameters& r = rope_of(c);
  const int64_t dim = c.rope_dim();
  RopeTables t;
  if (r.rope_type == "default") {
    t.inv_freq = default_inv_freq(r.rope_theta, dim);
  } else if (r.rope_type == "linear") {
    t.inv_freq = default_inv_freq(r.rope_theta, dim);
    const float f = float(*r.factor);
    for (float& x : t.inv_freq) x = x / f;  // inv_freq /= factor
  } else if (r.rope_type == "dynamic") {
    t.inv_freq = dynamic_inv_freq(c, dim, seq_len);
  } else if (r.rope_type == "yarn") {
    t = yarn(c, dim);
  } else if (r.rope_type == "longrope") {
    t = longrope(c, dim, seq_len);
  } else if (r.rope_type == "llama3") {
    t.inv_freq = llama3_inv_freq(r, dim);
  } else {
    throw ConfigError(c.origin + ": rope type '" + r.rope_type + "' is not supported");
  }
  t.rot_dim = dim;
  return t;
}

void rope_cos_sin(const RopeTables& r, const int64_t* positions, int64_t T, float* cos, float* sin) {
  const size_t n = r.inv_freq.size();
  const float scale = r.attention_scaling;
  for (int64_t t = 0; t < T; ++t) {
    const float p = float(positions[t]);  // position_ids.float()
    for (size_t i = 0; i < n; ++i) {
      const float f = r.inv_freq[i] * p;
      cos[size_t(t) * n + i] = std::cos(f) * scale;
      sin[size_t(t) * n + i] = std::sin(f) * scale;
    }
  }
}

RopeState::RopeState(const ModelConfig& c) : c_(c) {
  original_ = current_ = rope_init(c_);
  max_seq_len_cached_ = original_max_seq_len_ = c_.max_position_embeddings;
}

const RopeTables& RopeState::update(int64_t max_position_id) {
  const int64_t seq_len = max_position_id + 1;
  const std::string& type = c_.rope->rope_type;
  if (type == "dynamic") {
    const int64_t cached = max_seq_len_cached_;
    if (seq_len > cached) {  // growth
      current_ = rope_init(c_, seq_len);
      max_seq_len_cached_ = seq_len;
    }
    if (seq_len < original_max_seq_len_ && cached > original_max_seq_len_) {  // reset
      current_ = original_;
      max_seq_len_cached_ = original_max_seq_len_;
    }
  } else if (type == "longrope") {
    const int64_t orig = *c_.rope->original_max_position_embeddings;
    if (seq_len > orig) {
      // Long factors; attention_scaling stays the init's (transformers drops the new one).
      float scaling = original_.attention_scaling;
      current_ = rope_init(c_, orig + 1);
      current_.attention_scaling = scaling;
    } else {
      current_ = original_;
    }
  }
  return current_;
}

}  // namespace nibble
