// Optimizer pieces with torch / transformers semantics: AdamW (torch.optim.AdamW, non-fused,
// non-amsgrad), clip_grad_norm_ (global L2 norm), and the LR schedules of transformers'
// get_scheduler. Parameters and gradients are f32 host buffers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/train_ops.h"

namespace nibble::train {

struct ParamRef {
  float* value = nullptr;
  float* grad = nullptr;
  int64_t n = 0;
};

class AdamW {
 public:
  AdamW(std::vector<ParamRef> params, double lr, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
        double weight_decay = 0.01);
  // One step at learning rate lr (the scheduler's value): p *= 1 - lr*wd; m, v updated;
  // p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), in f32 as torch's foreach path.
  void step(double lr);
  void step() { step(lr_); }
  // The step count advanced and that step's scalars, for a caller that updates the parameters
  // itself (the device copies of a CUDA model: ops::adamw_ per tensor, its own moments).
  ops::AdamWStep next_step(double lr);
  void zero_grad();
  int64_t steps() const { return t_; }
  const std::vector<std::vector<float>>& exp_avg() const { return m_; }
  const std::vector<std::vector<float>>& exp_avg_sq() const { return v_; }
  // Restoring a checkpoint: the moments in place and the step count.
  std::vector<std::vector<float>>& exp_avg() { return m_; }
  std::vector<std::vector<float>>& exp_avg_sq() { return v_; }
  void set_steps(int64_t t) { t_ = t; }

 private:
  std::vector<ParamRef> p_;
  std::vector<std::vector<float>> m_, v_;
  double lr_, b1_, b2_, eps_, wd_;
  int64_t t_ = 0;
};

// torch.nn.utils.clip_grad_norm_(params, max_norm): total = ||all grads||_2 (computed in double
// here), every grad scaled by min(1, max_norm / (total + 1e-6)). Returns total. max_norm <= 0:
// no clipping (transformers' --max-grad-norm 0), the norm is still returned.
double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm);
// The scale clip_grad_norm_ applies for a total norm: min(1, max_norm / (total + 1e-6)), 1 when
// max_norm <= 0.
double clip_coef(double total, double max_norm);

// transformers' get_warmup_steps: warmup_steps if > 0, else ceil(warmup_ratio * total).
int64_t warmup_steps_for(int64_t total_steps, int64_t warmup_steps, double warmup_ratio);

// The multiplier of the base LR at `step` (0-based, as LambdaLR) for type "constant",
// "constant_with_warmup", "linear", "cosine" (num_cycles 0.5). ConfigError on other names.
double lr_lambda(const std::string& type, int64_t step, int64_t warmup, int64_t total);

}  // namespace nibble::train
