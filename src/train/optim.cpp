#include "train/optim.h"

#include <cmath>
#include <numbers>

#include "nibble/error.h"
#include "ops/train_ops.h"

namespace nibble::train {

AdamW::AdamW(std::vector<ParamRef> params, double lr, double beta1, double beta2, double eps,
             double weight_decay)
    : p_(std::move(params)), lr_(lr), b1_(beta1), b2_(beta2), eps_(eps), wd_(weight_decay) {
  if (lr < 0) throw ConfigError("AdamW: Invalid learning rate: " + std::to_string(lr));
  if (!(beta1 >= 0 && beta1 < 1))
    throw ConfigError("AdamW: Invalid beta parameter at index 0: " + std::to_string(beta1));
  if (!(beta2 >= 0 && beta2 < 1))
    throw ConfigError("AdamW: Invalid beta parameter at index 1: " + std::to_string(beta2));
  if (eps < 0) throw ConfigError("AdamW: Invalid epsilon value: " + std::to_string(eps));
  if (weight_decay < 0)
    throw ConfigError("AdamW: Invalid weight_decay value: " + std::to_string(weight_decay));
  for (const auto& p : p_) m_.emplace_back(size_t(p.n), 0.0f), v_.emplace_back(size_t(p.n), 0.0f);
}

ops::AdamWStep AdamW::next_step(double lr) {
  ++t_;
  // torch's _single_tensor_adamw: bias corrections in Python floats (double), step_size and
  // bias_correction2_sqrt double, the tensor math in f32.
  const double bc1 = 1.0 - std::pow(b1_, double(t_)), bc2 = 1.0 - std::pow(b2_, double(t_));
  ops::AdamWStep s;
  s.step_size = float(lr / bc1);
  s.bc2_sqrt = float(std::sqrt(bc2));
  s.decay = float(1.0 - lr * wd_);
  s.b1 = float(b1_);
  s.b2 = float(b2_);
  s.eps = float(eps_);
  return s;
}

void AdamW::step(double lr) {
  const ops::AdamWStep s = next_step(lr);
  for (size_t i = 0; i < p_.size(); ++i)
    ops::adamw_update(p_[i].value, p_[i].grad, m_[i].data(), v_[i].data(), p_[i].n, s);
}

void AdamW::zero_grad() {
  for (auto& p : p_) std::fill(p.grad, p.grad + p.n, 0.0f);
}

double clip_coef(double total, double max_norm) {
  return max_norm > 0 ? std::min(1.0, max_norm / (total + 1e-6)) : 1.0;
}

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm) {
  double s = 0;
  for (const auto& p : params)
    for (int64_t k = 0; k < p.n; ++k) s += double(p.grad[k]) * p.grad[k];
  const double total = std::sqrt(s), coef = clip_coef(total, max_norm);
  if (coef < 1.0)
    for (const auto& p : params) ops::scale_by(p.grad, p.n, coef);
  return total;
}

int64_t warmup_steps_for(int64_t total_steps, int64_t warmup_steps, double warmup_ratio) {
  return warmup_steps > 0 ? warmup_steps : int64_t(std::ceil(double(total_steps) * warmup_ratio));
}

double lr_lambda(const std::string& type, int64_t step, int64_t warmup, int64_t total) {
  const double s = double(step), w = double(warmup), t = double(total);
  if (type == "constant") return 1.0;
  const bool known = type == "constant_with_warmup" || type == "linear" || type == "cosine";
  if (known && step < warmup) return s / std::max(1.0, w);
  if (type == "constant_with_warmup") return 1.0;
  if (type == "linear") return std::max(0.0, (t - s) / std::max(1.0, t - w));
  if (type == "cosine") {
    const double progress = (s - w) / std::max(1.0, t - w);
    return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress)));
  }
  throw ConfigError("--lr-scheduler-type: '" + type + "' (constant, constant_with_warmup, linear, cosine)");
}

}  // namespace nibble::train
