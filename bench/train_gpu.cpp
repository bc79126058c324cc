// QLoRA training on one GPU: random-weight Llama shapes written at run time (random_model.h),
// quantized to NF4 + double quant (bf16 compute) while loading, a LoRA adapter r 16 (alpha 32)
// on q/k/v/o/gate/up/down, whole optimizer steps (forward, backward, clipping, AdamW) on random
// token batches: tokens/s (median of the timed steps after one warm-up step), seconds a step and
// the peak of the device memory pool, beside the matrix floor (the projections' and the head's
// FLOPs a token — forward, dX backward, and the forward again under gradient checkpointing —
// over the bf16 GEMM rate measured in the same run; attention and the LoRA terms not counted)
// and ../shared/PEERS.md's transformers + peft + bitsandbytes rows (measured on an H200).
//   train_gpu [--shapes llama32_1b,llama2_7b] [--dir DIR] [--steps N] [--checkpointing LIST]
//             [--json PATH] [--profile 1]
// --checkpointing: a comma list of 0 (none), 1 (full recomputation), selective, selective:N (the
// first N layers whole); both = 0,1 (default 1).
// --profile 1: after the warm-up steps, one more step between cudaProfilerStart and cudaProfilerStop
// (for `ncu --profile-from-start off`: the kernels of a whole optimizer step), printed apart.
// Prints "no CUDA device" and exits 0 when the build or the machine has no GPU.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/tensor.h"
#include "nibble/train.h"
#include "random_model.h"
#ifdef NIBBLE_WITH_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "backends/cuda/runtime.h"
#include "gpu_rates.h"
#endif

using namespace nibble;
namespace fs = std::filesystem;
using json = nlohmann::json;

#ifdef NIBBLE_WITH_CUDA
namespace {

// One --checkpointing entry.
struct Ckpt {
  bool on = false;
  bool selective = false;
  int64_t full_layers = 0;
  std::string label() const {
    if (!on) return "none";
    if (!selective) return "full";
    return full_layers ? "selective+" + std::to_string(full_layers) + " full" : "selective";
  }
};

std::vector<Ckpt> parse_ckpts(const std::string& v) {
  std::vector<Ckpt> out;
  for (size_t p = 0; p <= v.size();) {
    const size_t q = std::min(v.find(',', p), v.size());
    const std::string e = v.substr(p, q - p);
    p = q + 1;
    if (e == "0" || e == "both") out.push_back({});
    if (e == "1" || e == "both") out.push_back({true, false, 0});
    if (e == "selective") out.push_back({true, true, 0});
    if (e.rfind("selective:", 0) == 0) out.push_back({true, true, std::stoll(e.substr(10))});
    if (e != "0" && e != "1" && e != "both" && e != "selective" && e.rfind("selective:", 0) != 0)
      throw std::invalid_argument("--checkpointing: " + e + " (0, 1, both, selective, selective:N)");
  }
  return out;
}

struct Run {
  const bench::LlamaShape* shape;
  int64_t batch, seq;
  double peer_tok_s, peer_peak_gib;  // PEERS.md (H200), 0 where it has none
};

TrainBatch random_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  bench::SplitMix64 rng{seed};
  TrainBatch b;
  for (int64_t i = 0; i < B; ++i) {
    b.input_ids.emplace_back();
    for (int64_t t = 0; t < T; ++t) b.input_ids.back().push_back(int64_t(rng.next() % uint64_t(V)));
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> names = {"llama32_1b", "llama2_7b"};
  fs::path dir = fs::temp_directory_path() / "nibble_model_gpu";
  std::string json_path, ckpt_arg = "1";
  int64_t steps = 4;
  bool profile = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--shapes") {
      names.clear();
      for (size_t p = 0; p <= v.size();) {
        const size_t q = std::min(v.find(',', p), v.size());
        names.push_back(v.substr(p, q - p));
        p = q + 1;
      }
    } else if (a == "--dir") {
      dir = v;
    } else if (a == "--steps") {
      steps = std::max<int64_t>(2, std::stoll(v));
    } else if (a == "--checkpointing") {
      ckpt_arg = v;
    } else if (a == "--json") {
      json_path = v;
    } else if (a == "--profile") {
      profile = v == "1";
    } else {
      std::fprintf(stderr, "train_gpu: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (!cuda_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  std::vector<Ckpt> ckpts;
  try {
    ckpts = parse_ckpts(ckpt_arg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_gpu: %s\n", e.what());
    return 2;
  }
  const std::string dev_name = cuda::device_name(0);
  const double mm_rate = bench::matmul_rate();
  std::printf("device %s: bf16 GEMM 8192^3 %.0f TFLOP/s\n", dev_name.c_str(), mm_rate * 1e-12);
  json rows = json::array();
  for (const std::string& name : names) {
    Run r{};
    if (name == "llama2_7b")
      r = {&bench::kLlama2_7b, 1, 1024, 3373, 14.4};
    else if (name == "llama32_1b")
      r = {&bench::kLlama32_1b, 4, 512, 12909, 0};
    else if (name == "llama31_8b")
      r = {&bench::kLlama31_8b, 1, 1024, 0, 0};
    else {
      std::fprintf(stderr, "train_gpu: unknown shape %s (llama32_1b, llama2_7b, llama31_8b)\n", name.c_str());
      return 2;
    }
    const bench::LlamaShape& s = *r.shape;
    const fs::path mdir = dir / s.name;
    if (!fs::exists(mdir / "model.safetensors")) bench::write_llama(s, mdir);
    for (const Ckpt& ck : ckpts) {
      LoadOptions lo;
      lo.device_map = "cuda";
      lo.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                                  .bnb_4bit_compute_dtype = "bfloat16",
                                                  .bnb_4bit_quant_type = "nf4",
                                                  .bnb_4bit_use_double_quant = true};
      LoraConfig cfg;
      cfg.r = 16;
      cfg.lora_alpha = 32;
      cfg.target_modules_str = "all-linear";
      cuda::reset_pool_peak(0);
      PeftModel p = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(mdir, lo), cfg, 1);
      const double model_gib = double(cuda::pool_stats(0).used) / double(1ull << 30);
      TrainingArguments a;
      a.learning_rate = 2e-4;
      a.gradient_checkpointing = ck.on;
      a.recompute_granularity = ck.selective ? "selective" : "full";
      a.recompute_num_layers = ck.full_layers;
      LoraTrainer tr(p, a, steps);
      std::vector<double> rate, secs, losses;
      for (int64_t i = 0; i < steps; ++i) {
        const StepLog l = tr.train_step({random_batch(r.batch, r.seq, s.V, uint64_t(100 + i))});
        losses.push_back(l.loss);
        if (i == 0) continue;  // warm-up: workspaces, kernels' first launches
        rate.push_back(double(l.n_tokens) / l.seconds);
        secs.push_back(l.seconds);
      }
      if (profile) {
        cudaDeviceSynchronize();
        cudaProfilerStart();
        const StepLog l = tr.train_step({random_batch(r.batch, r.seq, s.V, uint64_t(100 + steps))});
        cudaDeviceSynchronize();
        cudaProfilerStop();
        std::printf("%s profiled step: %.3f s, loss %.4f\n", s.name, l.seconds, l.loss);
      }
      std::sort(rate.begin(), rate.end());
      std::sort(secs.begin(), secs.end());
      const double peak_gib = double(cuda::pool_stats(0).used_high) / double(1ull << 30);
      // matrix FLOPs a token: decoder projections (forward, dX, + forward again for the layers
      // recomputed whole) and the head (forward and dX)
      const double proj =
          double(s.L) * double(s.C * s.D * (s.Hq + 2 * s.Hkv) + s.Hq * s.D * s.C + 3 * s.C * s.F);
      const double whole = !ck.on         ? 0.0
                           : ck.selective ? double(std::min<int64_t>(ck.full_layers, s.L)) / double(s.L)
                                          : 1.0;
      const double flops_tok = 2.0 * proj * (2.0 + whole) + 2.0 * double(s.V * s.C) * 2;
      const double floor_tok_s = mm_rate / flops_tok;
      json row{{"device", dev_name},
               {"model", s.name},
               {"format", "nf4_dq"},
               {"compute", "bf16"},
               {"lora", "r 16, alpha 32, q/k/v/o/gate/up/down"},
               {"batch", r.batch},
               {"seq", r.seq},
               {"gradient_checkpointing", ck.on},
               {"recompute", ck.label()},
               {"timed_steps", int64_t(rate.size())},
               {"tokens_per_s_median", rate[rate.size() / 2]},
               {"seconds_per_step_median", secs[secs.size() / 2]},
               {"peak_pool_gib", peak_gib},
               {"model_pool_gib", model_gib},
               {"matmul_tflops", mm_rate * 1e-12},
               {"matrix_floor_tok_s", floor_tok_s},
               {"losses", losses},
               {"peers_h200",
                {{"source", "../shared/PEERS.md, one H200"},
                 {"transformers_peft_bnb_tok_s", r.peer_tok_s},
                 {"transformers_peft_bnb_peak_gib", r.peer_peak_gib}}}};
      std::printf(
          "%s %lld x %lld%s: %.0f tok/s (%.3f s a step; matrix floor %.0f tok/s: %.0f%%), peak pool %.2f GiB "
          "(model + adapter %.2f) (transformers + peft + bnb on an H200: %.0f tok/s, %.1f GiB)\n",
          s.name, (long long)r.batch, (long long)r.seq, (" recompute " + ck.label()).c_str(),
          rate[rate.size() / 2], secs[secs.size() / 2], floor_tok_s,
          100.0 * rate[rate.size() / 2] / floor_tok_s, peak_gib, model_gib, r.peer_tok_s, r.peer_peak_gib);
      std::fflush(stdout);
      rows.push_back(row);
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << rows.dump(1) << "\n";
  return 0;
}
#else
int main() {
  std::printf("no CUDA device\n");
  return 0;
}
#endif
