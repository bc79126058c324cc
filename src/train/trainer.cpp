// LoraTrainer: transformers' Trainer loop for one optimizer step (gradient accumulation with
// the loss normalised by the step's number of targets, as num_items_in_batch does since
// transformers 4.46; clip_grad_norm_; AdamW; get_scheduler's LR), over the training pass of
// lora_train.cpp.
#include <chrono>
#include <cmath>
#include <string>
#include <tuple>

#include "io/atomic_dir.h"
#include "models/causal_lm_impl.h"
#include "nibble/safetensors.h"
#include "nibble/train.h"
#include "ops/train_ops.h"
#include "train/lora_train.h"
#include "train/optim.h"

namespace nibble {

using detail::str;

struct LoraTrainer::Impl {
  PeftModel& model;
  TrainingArguments args;
  int64_t total_steps = 0, warmup = 0;
  Tensor head_w;  // [V, C] frozen, as the loss computes with it (train::head_weight)
  train::GradMap grads;
  std::vector<std::string> names;  // of the adapted Linears, in grads' parameter order
  std::unique_ptr<train::AdamW> opt;
  int64_t step = 0;
  // A CUDA model's optimizer runs on the device: per parameter (peft's order) the Linear's device
  // tensor, its gradient (the step's accumulator, LoraGrad::dA/dB) and the moments, each a view
  // of one flat buffer (x, g, m, v below: the Linears' adapter tensors are moved into x), so the
  // optimizer, the clip's sums of squares and its scaling are one launch each; the adapter's
  // host tensors are refreshed from the device when read (PeftModel::device_adapter_changed).
  // Empty on the CPU, where the host AdamW updates the host tensors the Linears share.
  struct DeviceParam {
    Tensor x, g, m, v;
  };
  std::vector<DeviceParam> dev;
  Tensor flat_x, flat_g, flat_m, flat_v, flat_ends;  // f32 [n] x4; i64 [params]: each one's end

  Impl(PeftModel& m, const TrainingArguments& a, int64_t total) : model(m), args(a), total_steps(total) {
    CausalLM::Impl& mi = m.model().impl();
    if (mi.lm_head.lora.defined())
      throw UnsupportedError("LoRA training: an adapter on the output head (" + mi.lm_head.name +
                             ") is not supported");
    const LoraConfig& lc = m.adapter().config;
    if (lc.bias != "none")
      throw UnsupportedError("LoraTrainer: bias=\"" + lc.bias +
                             "\" (training the base biases) is not supported; use bias=\"none\"");
    if (a.recompute_granularity != "full" && a.recompute_granularity != "selective")
      throw ConfigError("TrainingArguments.recompute_granularity: \"" + a.recompute_granularity +
                        "\" is not one of full, selective");
    if (a.recompute_num_layers < 0)
      throw ConfigError("TrainingArguments.recompute_num_layers: " + std::to_string(a.recompute_num_layers) +
                        " is negative");
    if (!a.gradient_checkpointing && (a.recompute_granularity != "full" || a.recompute_num_layers > 0))
      throw ConfigError(
          "TrainingArguments.recompute_granularity / recompute_num_layers apply with "
          "gradient_checkpointing (--gradient-checkpointing true)");
    if (a.recompute_granularity == "full" && a.recompute_num_layers > 0)
      throw ConfigError(
          "TrainingArguments.recompute_num_layers: the first N layers recomputed whole is a "
          "choice of selective granularity (--recompute-granularity selective); full "
          "recomputes every layer");
    if (!lc.modules_to_save.empty())
      throw UnsupportedError("LoraTrainer: modules_to_save (fully trained modules) is not supported");
    head_w = train::head_weight(mi);
    for (const NamedLinear* nl : mi.linears()) {
      if (!nl->lora.defined()) continue;
      train::LoraGrad& g = grads[nl];
      if (mi.device.is_cpu()) {  // a CUDA model's gradients live on the device (dA, dB below)
        g.A.assign(size_t(nl->lora.A.numel()), 0.0f);
        g.B.assign(size_t(nl->lora.B.numel()), 0.0f);
      }
      names.push_back(nl->name);
    }
    if (grads.empty()) throw ConfigError("LoraTrainer: the model has no LoRA adapter attached");
    if (!mi.device.is_cpu()) flatten_device_params(mi);
    opt = std::make_unique<train::AdamW>(params(), a.learning_rate, a.adam_beta1, a.adam_beta2,
                                         a.adam_epsilon, a.weight_decay);
    warmup = train::warmup_steps_for(total_steps, a.warmup_steps, a.warmup_ratio);
    train::lr_lambda(a.lr_scheduler_type, 0, warmup,
                     std::max<int64_t>(total_steps, 1));  // validates the name
  }

  void flatten_device_params(CausalLM::Impl& mi) {
    int64_t total = 0;
    for (const NamedLinear* nl : mi.linears())
      if (nl->lora.defined()) total += nl->lora.A.numel() + nl->lora.B.numel();
    flat_x = Tensor::empty({total}, DType::F32, mi.device);
    for (Tensor* t : {&flat_g, &flat_m, &flat_v}) *t = Tensor::zeros({total}, DType::F32, mi.device);
    std::vector<int64_t> ends;
    int64_t off = 0;
    for (const NamedLinear* cnl : mi.linears()) {
      if (!cnl->lora.defined()) continue;
      NamedLinear* nl = const_cast<NamedLinear*>(cnl);  // the model's adapter tensors move into flat_x
      train::LoraGrad& g = grads[cnl];
      for (auto [x, gd] : {std::pair{&nl->lora.A, &g.dA}, std::pair{&nl->lora.B, &g.dB}}) {
        const int64_t n = x->numel();
        const auto at = [&](const Tensor& f) { return f.slice(0, off, off + n).view(x->shape()); };
        Tensor xs = at(flat_x);
        xs.copy_from(*x);
        *x = xs;
        *gd = at(flat_g);
        dev.push_back({xs, *gd, at(flat_m), at(flat_v)});
        off += n;
        ends.push_back(off);
      }
    }
    flat_ends = Tensor::from_vector({int64_t(ends.size())}, DType::I64, ends).to(mi.device);
  }

  // The adapter's host tensors with their gradients, in peft's parameter order (modules in
  // order; lora_A, then lora_B within one). On a CUDA model the Linears hold device copies and
  // the grads are null (the device optimizer steps there).
  std::vector<train::ParamRef> params() const {
    std::vector<train::ParamRef> p;
    for (const NamedLinear* nl : model.model().impl().linears()) {
      if (!nl->lora.defined()) continue;
      auto& g = const_cast<train::LoraGrad&>(grads.at(nl));
      const LoraPair& w = model.adapter().modules.at(nl->name);
      p.push_back({const_cast<float*>(w.A.data<float>()), g.A.data(), w.A.numel()});
      p.push_back({const_cast<float*>(w.B.data<float>()), g.B.data(), w.B.numel()});
    }
    return p;
  }

  ExecContext& dev_ctx() const { return ExecContext::current(model.model().impl().device); }

  void zero_grad() {
    if (flat_g.defined()) ops::zero_(dev_ctx(), flat_g);
    for (auto& [nl, g] : grads) {
      std::fill(g.A.begin(), g.A.end(), 0.0f);
      std::fill(g.B.begin(), g.B.end(), 0.0f);
    }
  }

  // clip_grad_norm_ on the device gradients: each tensor's sum of squares in double, one copy of
  // them to the host, the total in order there; the gradients scaled on the device. Returns it.
  double device_clip() {
    ExecContext& ctx = dev_ctx();
    const Tensor sq = Tensor::empty({int64_t(dev.size())}, DType::F64, ctx.device());
    ops::sum_squares(ctx, flat_g, flat_ends, sq);
    const Tensor h = sq.to(Device::cpu());
    double sum = 0;
    for (size_t i = 0; i < dev.size(); ++i) sum += h.data<double>()[i];
    const double total = std::sqrt(sum), coef = train::clip_coef(total, args.max_grad_norm);
    if (coef < 1.0) ops::scale_(ctx, flat_g, coef);
    return total;
  }
  // The device moments into the host optimizer's (saving), or back (loading).
  void moments_to_host() {
    for (size_t i = 0; i < dev.size(); ++i) {
      const Tensor m = dev[i].m.to(Device::cpu()), v = dev[i].v.to(Device::cpu());
      std::copy(m.data<float>(), m.data<float>() + m.numel(), opt->exp_avg()[i].begin());
      std::copy(v.data<float>(), v.data<float>() + v.numel(), opt->exp_avg_sq()[i].begin());
    }
  }
  void moments_to_device() {
    for (size_t i = 0; i < dev.size(); ++i) {
      const Shape& sh = dev[i].m.shape();
      dev[i].m.copy_from(Tensor::from_vector(sh, DType::F32, opt->exp_avg()[i]));
      dev[i].v.copy_from(Tensor::from_vector(sh, DType::F32, opt->exp_avg_sq()[i]));
    }
  }

  static train::TokenBatch tokens(const TrainBatch& b) { return {b.input_ids, b.labels}; }

  // Gradients of sum(NLL) / targets over the micro-batches into grads; loss sum, targets, tokens.
  train::PassResult accumulate(const std::vector<TrainBatch>& micro) {
    int64_t n = 0;
    for (const auto& b : micro) n += train::count_targets(tokens(b));
    train::PassResult total;
    if (n == 0)
      throw ShapeError(
          "train_step: the batch has no targets (every label is -100, or sequences of one token)");
    train::PassOptions o;
    o.grad_scale = 1.0f / float(n);
    o.recompute = !args.gradient_checkpointing                ? train::Recompute::None
                  : args.recompute_granularity == "selective" ? train::Recompute::Selective
                                                              : train::Recompute::Full;
    o.full_layers = args.recompute_num_layers;
    zero_grad();
    for (size_t i = 0; i < micro.size(); ++i) {
      o.dropout_seed = args.seed * 1000003ull + uint64_t(step) * 1009ull + i;
      const train::PassResult r =
          train::forward_backward(model.model().impl(), tokens(micro[i]), head_w, grads, o);
      total.loss_sum += r.loss_sum;
      total.n_targets += r.n_targets;
      total.n_tokens += r.n_tokens;
    }
    return total;
  }
};

LoraTrainer::LoraTrainer(PeftModel& model, const TrainingArguments& args, int64_t total_steps)
    : impl_(std::make_unique<Impl>(model, args, total_steps)) {}
LoraTrainer::~LoraTrainer() = default;

int64_t LoraTrainer::global_step() const {
  return impl_->step;
}

StepLog LoraTrainer::train_step(const std::vector<TrainBatch>& micro_batches) {
  Impl& I = *impl_;
  if (micro_batches.empty()) throw ShapeError("train_step: no micro-batches");
  const auto t0 = std::chrono::steady_clock::now();
  const train::PassResult r = I.accumulate(micro_batches);
  StepLog s;
  s.loss = r.loss_sum / double(r.n_targets);
  s.n_tokens = r.n_tokens;
  s.n_targets = r.n_targets;
  if (!std::isfinite(s.loss))
    throw NonFiniteLossError(str("training loss is ", s.loss, " at step ", I.step + 1));
  s.grad_norm = I.dev.empty() ? train::clip_grad_norm(I.params(), I.args.max_grad_norm) : I.device_clip();
  if (!std::isfinite(s.grad_norm))
    throw NonFiniteLossError(
        str("gradient norm is ", s.grad_norm, " at step ", I.step + 1, " (loss ", s.loss, ")"));
  s.learning_rate = I.args.learning_rate * train::lr_lambda(I.args.lr_scheduler_type, I.step, I.warmup,
                                                            std::max<int64_t>(I.total_steps, 1));
  if (I.dev.empty()) {
    I.opt->step(s.learning_rate);
  } else {
    const ops::AdamWStep st = I.opt->next_step(s.learning_rate);
    ops::adamw_(I.dev_ctx(), I.flat_x, I.flat_g, I.flat_m, I.flat_v, st);
    I.model.device_adapter_changed();
  }
  s.step = ++I.step;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

double LoraTrainer::evaluate(const std::vector<TrainBatch>& batches) const {
  double sum = 0;
  int64_t n = 0;
  for (const auto& b : batches) {
    const train::PassResult r = train::eval_loss(impl_->model.model().impl(), Impl::tokens(b), impl_->head_w);
    sum += r.loss_sum;
    n += r.n_targets;
  }
  if (n == 0) throw ShapeError("evaluate: no targets");
  return sum / double(n);
}

std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> LoraTrainer::gradients(
    const TrainBatch& b) {
  impl_->accumulate({b});
  std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> out;
  const auto host = [](const Tensor& t) {
    const Tensor h = t.to(Device::cpu());
    return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
  };
  for (const auto& [nl, g] : impl_->grads)
    out[nl->name] = g.dA.defined() ? std::pair{host(g.dA), host(g.dB)} : std::pair{g.A, g.B};
  return out;
}

// optimizer.safetensors: state.<i>.exp_avg / exp_avg_sq (f32) per parameter in the optimizer's
// order, and "step" (i64 [1]).
void LoraTrainer::save_state(const std::filesystem::path& dir) const {
  std::map<std::string, Tensor> t;
  impl_->moments_to_host();
  const train::AdamW& opt = *impl_->opt;
  const auto& m = opt.exp_avg();
  const auto& v = opt.exp_avg_sq();
  for (size_t i = 0; i < m.size(); ++i) {
    t[str("state.", i, ".exp_avg")] = Tensor::from_vector({int64_t(m[i].size())}, DType::F32, m[i]);
    t[str("state.", i, ".exp_avg_sq")] = Tensor::from_vector({int64_t(v[i].size())}, DType::F32, v[i]);
  }
  t["step"] = Tensor::from_vector({1}, DType::I64, std::vector<int64_t>{impl_->step});
  std::filesystem::create_directories(dir);
  save_safetensors(dir / "optimizer.safetensors", t);
}

void LoraTrainer::save_checkpoint(const std::filesystem::path& dir, const PeftModel& model,
                                  const std::string& trainer_state_json) const {
  io::AtomicDir out(dir, [](const std::string&) { return true; });  // nothing of an old checkpoint stays
  model.adapter_to_save().write_files(out.path());
  save_state(out.path());
  write_file_atomic(out.path() / "trainer_state.json", trainer_state_json.data(), trainer_state_json.size());
  out.commit();
}

void LoraTrainer::load_state(const std::filesystem::path& dir) {
  const auto path = dir / "optimizer.safetensors";
  SafetensorsFile f = SafetensorsFile::open(path);
  auto& m = impl_->opt->exp_avg();
  auto& v = impl_->opt->exp_avg_sq();
  for (size_t i = 0; i < m.size(); ++i) {
    for (auto [key, dst] : {std::pair{str("state.", i, ".exp_avg"), &m[i]},
                            std::pair{str("state.", i, ".exp_avg_sq"), &v[i]}}) {
      Tensor x = f.get(key);
      if (x.dtype() != DType::F32 || x.numel() != int64_t(dst->size()))
        throw ShapeError(str(path.string(), ": tensor ", key, " is ", x.str(), ", the optimizer needs f32 [",
                             dst->size(), "]"));
      std::copy(x.data<float>(), x.data<float>() + x.numel(), dst->begin());
    }
  }
  const int64_t s = f.get("step").data<int64_t>()[0];
  impl_->step = s;
  impl_->opt->set_steps(s);
  impl_->moments_to_device();
}

}  // namespace nibble
