// `nibble merge MODEL --adapter DIR --output-dir OUT [--requantize] [quant flags]`: peft's
// merge_and_unload. The adapter is folded into the base weights (dequantized); without
// --requantize the merged model is saved unquantized (f32), with it every quantized Linear is
// quantized again with the base's BitsAndBytesConfig. Printed: how far the merged model's
// logits drift from the unmerged (base + adapter) model on a probe text — the drift peft users
// see when they re-quantize a merge.
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "nibble/train.h"

namespace fs = std::filesystem;

namespace nibble::cli {

void add_merge_command(CLI::App& app, MergeArgs& a) {
  CLI::App* cmd = app.add_subcommand("merge", "fold a LoRA adapter into the base weights and save the model");
  cmd->add_option("MODEL", a.model, "base model folder")->required();
  cmd->add_option("--adapter", a.adapter, "peft adapter folder")->required();
  cmd->add_option("--output-dir", a.output_dir, "where the merged model goes")->required();
  cmd->add_flag("--requantize", a.requantize,
                "quantize the merged weights again (else: saved unquantized, f32)");
  add_quant_flags(*cmd, a.q);
}

int run_merge(const MergeArgs& a) {
  QuantFlags q = a.q;
  if (q.device_map == "auto") q.device_map = "cpu";
  PeftModel peft = PeftModel::from_pretrained(load_model(a.model, q), a.adapter);
  std::vector<int64_t> probe;
  if (fs::exists(fs::path(a.model) / "tokenizer.json"))
    probe = Tokenizer::from_pretrained(a.model)
                .encode("Once upon a time, there was a little girl who liked to play.")
                .ids;
  const int64_t V = peft.model().config().vocab_size;
  if (probe.size() < 2) {
    probe.clear();
    for (int64_t i = 0; i < 16; ++i) probe.push_back((i * 7919 + 1) % V);
  }
  const Tensor before = peft.model().forward(probe);  // [T, V] with the adapter unmerged
  CausalLM merged = std::move(peft).merge_and_unload(a.requantize);
  const Tensor after = merged.forward(probe);
  double mx = 0, d = 0, kl = 0;
  for (int64_t t = 0; t < before.size(0); ++t) {
    const float *p = before.data<float>() + t * V, *r = after.data<float>() + t * V;
    double mp = p[0], mr = r[0];
    for (int64_t v = 0; v < V; ++v) mp = std::max(mp, double(p[v])), mr = std::max(mr, double(r[v]));
    double zp = 0, zr = 0;
    for (int64_t v = 0; v < V; ++v) zp += std::exp(p[v] - mp), zr += std::exp(r[v] - mr);
    for (int64_t v = 0; v < V; ++v) {
      mx = std::max(mx, std::abs(double(p[v])));
      d = std::max(d, std::abs(double(p[v]) - double(r[v])));
      const double lp = p[v] - mp - std::log(zp), lr = r[v] - mr - std::log(zr);
      kl += std::exp(lp) * (lp - lr);
    }
  }
  kl /= double(before.size(0));
  merged.save_pretrained(a.output_dir);
  nlohmann::json j{{"output_dir", a.output_dir}, {"requantized", a.requantize},
                   {"drift_max_abs_logit", d},   {"drift_rel", d / std::max(mx, 1e-30)},
                   {"drift_mean_kl", kl},        {"probe_tokens", probe.size()}};
  std::printf("%s\n", j.dump().c_str());
  std::fprintf(
      stderr,
      "merged%s: logits drift from the unmerged model max |diff| %.3g (%.2e of max |logit|), KL %.3g\n",
      a.requantize ? " and re-quantized" : " (unquantized)", d, d / std::max(mx, 1e-30), kl);
  return 0;
}

}  // namespace nibble::cli
