// End-to-end GPU benchmark of a random-weight model of a real shape (written at run time into
// --dir, never committed): load + quantize to NF4 + double quant (bf16 compute) from a warm page
// cache, peak GPU memory, prefill-512 tok/s, decode tok/s at batch 1/4/16 and context 128/4096.
// Each figure is printed beside its physical floor, measured in the same run (device-to-device
// copy bandwidth for decode: the bytes a step must read; cuBLAS bf16 8192^3 rate for prefill: the
// step's matrix FLOPs) and beside the PEERS.md row measured on the H200 for the same shape.
//   model_gpu [--shapes llama2_7b,llama32_1b,llama31_8b] [--dir DIR] [--json PATH]
//             [--batches 1,4,16] [--contexts 128,4096] [--steps N] [--keep] [--prefill-only]
//             [--max-memory cuda:0=2.5GiB,cpu=64GiB] [--profile-decode N]
// --profile-decode N: one load, a prefill of the first --contexts value, 4 warm-up decode steps
// at the first --batches value, then N steps between cudaProfilerStart/Stop (for
// `ncu --profile-from-start off`: the kernels of a decode step and their times), nothing else.
// --max-memory places the model as device_map="auto" does under that budget (the layers past the
// GPU's share run on the CPU, as transformers + accelerate with llm_int8_enable_fp32_cpu_offload);
// the decode figures then also say how many layers each device holds and, from the same shape
// measured on the GPU alone first, how a step's time splits between the GPU and the rest.
// Prints "no CUDA device" and exits 0 without a GPU.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/causal_lm_impl.h"  // KVCache
#include "nibble/bnb_config.h"
#include "nibble/device_map.h"
#include "nibble/model.h"
#include "nibble/tensor.h"
#include "random_model.h"
#ifdef NIBBLE_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include "backends/cuda/check.h"
#include "backends/cuda/runtime.h"
#include "gpu_rates.h"
#endif

using namespace nibble;
namespace fs = std::filesystem;
using json = nlohmann::json;

#ifdef NIBBLE_WITH_CUDA
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
using bench::copy_bandwidth;
using bench::matmul_rate;
using bench::median;

// Reads every file of dir once (the page cache is warm for the timed load).
void warm_page_cache(const fs::path& dir) {
  std::vector<char> buf(size_t(64) << 20);
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream f(e.path(), std::ios::binary);
    while (f.read(buf.data(), std::streamsize(buf.size())) || f.gcount() > 0) {
    }
  }
}

std::vector<int64_t> random_ids(int64_t n, int64_t V, uint64_t seed) {
  bench::SplitMix64 r{seed};
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = int64_t(r.next() % uint64_t(V));
  return ids;
}

int64_t argmax_row(const Tensor& logits, int64_t row) {
  const int64_t V = logits.size(1);
  const float* p = logits.data<float>() + row * V;
  return int64_t(std::max_element(p, p + V) - p);
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  size_t a = 0;
  while (a < s.size()) {
    size_t b = s.find(',', a);
    if (b == std::string::npos) b = s.size();
    v.push_back(std::stoll(s.substr(a, b - a)));
    a = b + 1;
  }
  return v;
}

// PEERS.md rows measured on the H200 (2026-12-01), for the printout beside ours.
struct Peer {
  double llamacpp_q4_decode, llamacpp_q4_prefill, bnb_decode, bnb_prefill, bnb_load;
};
Peer peer_for(const std::string& shape) {
  if (shape == "llama2_7b") return {353, 10499, 19.5, 10754, 2.36};
  if (shape == "llama32_1b") return {0, 0, 63.9, 22687, 0.61};
  return {0, 0, 0, 0, 0};
}

// The PEERS.md row beside each result (measured on an H200; 0 where PEERS.md has none).
json peer_json(const Peer& p) {
  return {{"source", "../shared/PEERS.md, one H200, 2026-12-01"},
          {"llamacpp_q4_0_decode_tok_s", p.llamacpp_q4_decode},
          {"llamacpp_q4_0_prefill512_tok_s", p.llamacpp_q4_prefill},
          {"transformers_bnb_nf4_dq_decode_tok_s", p.bnb_decode},
          {"transformers_bnb_nf4_dq_prefill512_tok_s", p.bnb_prefill},
          {"transformers_bnb_load_s", p.bnb_load}};
}

// Greedy decode of B sequences at context ctx (prefilled in chunks of 512), one host round trip
// a step (the B argmax ids, found on the device, as generate() and the server do for greedy
// sequences): tokens a second over `steps` steps after 4 warm-up steps.
// profiled > 0: then `profiled` more steps between cudaProfilerStart and cudaProfilerStop.
double decode_tok_s(const CausalLM& model, int64_t B, int64_t ctx, int64_t steps, int64_t V,
                    int64_t profiled = 0) {
  std::vector<std::unique_ptr<KVCache>> caches;
  std::vector<KVCache*> cp;
  std::vector<int64_t> tok(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    caches.push_back(model.new_cache(ctx + 4 + steps + profiled + 8));  // warm-up, timed, profiled
    cp.push_back(caches.back().get());
    auto ids = random_ids(ctx, V, uint64_t(1000 + b));
    Tensor lg;
    for (int64_t p = 0; p < ctx; p += 512) {
      std::vector<int64_t> chunk(ids.begin() + p, ids.begin() + std::min<int64_t>(ctx, p + 512));
      lg = model.forward_last(chunk, cp.back());
    }
    tok[size_t(b)] = argmax_row(lg, 0);
  }
  auto step = [&] { tok = model.decode_batch_argmax(tok, cp); };
  for (int w = 0; w < 4; ++w) step();
  auto t1 = Clock::now();
  for (int64_t n = 0; n < steps; ++n) step();
  const double dt = since(t1);
  if (profiled > 0) {
    NIBBLE_CUDA_CHECK(cudaDeviceSynchronize());
    NIBBLE_CUDA_CHECK(cudaProfilerStart());
    for (int64_t n = 0; n < profiled; ++n) step();
    NIBBLE_CUDA_CHECK(cudaDeviceSynchronize());
    NIBBLE_CUDA_CHECK(cudaProfilerStop());
  }
  return double(B * steps) / dt;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> shapes = {"llama2_7b"};
  fs::path dir = fs::temp_directory_path() / "nibble_model_gpu";
  std::string json_path;
  std::vector<int64_t> batches = {1, 4, 16}, contexts = {128, 4096};
  int64_t steps = 64;
  bool keep = false, prefill_only = false;
  std::string max_memory;
  int64_t profile_steps = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "model_gpu: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--shapes") {
      shapes.clear();
      std::string s = next();
      for (size_t p = 0; p < s.size();) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        shapes.push_back(s.substr(p, q - p));
        p = q + 1;
      }
    } else if (a == "--dir") {
      dir = next();
    } else if (a == "--json") {
      json_path = next();
    } else if (a == "--batches") {
      batches = parse_list(next());
    } else if (a == "--contexts") {
      contexts = parse_list(next());
    } else if (a == "--steps") {
      steps = std::stoll(next());
    } else if (a == "--keep") {
      keep = true;
    } else if (a == "--profile-decode") {
      profile_steps = std::stoll(next());
    } else if (a == "--max-memory") {
      max_memory = next();
    } else if (a == "--prefill-only") {  // one load, a warm-up and a profiled prefill-512
      prefill_only = true;
    } else {
      std::fprintf(stderr,
                   "usage: model_gpu [--shapes a,b] [--dir DIR] [--json PATH] [--batches 1,4,16] "
                   "[--contexts 128,4096] [--steps N] [--keep] [--prefill-only] [--max-memory SPEC] "
                   "[--profile-decode N]\n");
      return 2;
    }
  }
  if (!cuda_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  const std::string dev_name = cuda::device_name(0);
  const double copy_bw = copy_bandwidth(), mm_rate = matmul_rate();
  std::printf("device %s: D2D copy %.0f GB/s, bf16 GEMM 8192^3 %.0f TFLOP/s\n", dev_name.c_str(),
              copy_bw * 1e-9, mm_rate * 1e-12);
  json rows = json::array();
  for (const std::string& name : shapes) {
    const bench::LlamaShape* sp = name == "llama2_7b"    ? &bench::kLlama2_7b
                                  : name == "llama31_8b" ? &bench::kLlama31_8b
                                  : name == "llama32_1b" ? &bench::kLlama32_1b
                                                         : nullptr;
    if (!sp) {
      std::fprintf(stderr, "model_gpu: unknown shape %s\n", name.c_str());
      return 2;
    }
    const bench::LlamaShape& s = *sp;
    const fs::path mdir = dir / s.name;
    if (!fs::exists(mdir / "model.safetensors")) {
      auto t0 = Clock::now();
      bench::write_llama(s, mdir);
      std::printf("%s: wrote the random checkpoint in %.1f s\n", s.name, since(t0));
    }
    warm_page_cache(mdir);
    LoadOptions lo;
    lo.device_map = "cuda";
    lo.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                                .bnb_4bit_compute_dtype = "bfloat16",
                                                .bnb_4bit_quant_type = "nf4",
                                                .bnb_4bit_use_double_quant = true};
    if (profile_steps > 0) {
      CausalLM m1 = AutoModelForCausalLM::from_pretrained(mdir, lo);
      const double tok_s = decode_tok_s(m1, batches[0], contexts[0], 4, s.V, profile_steps);
      std::printf("%s decode B=%lld ctx=%lld under the profiler: %.1f tok/s\n", s.name, (long long)batches[0],
                  (long long)contexts[0], tok_s);
      continue;
    }
    if (prefill_only) {  // a warm-up prefill, then one between cudaProfilerStart and Stop
      CausalLM m1 = AutoModelForCausalLM::from_pretrained(mdir, lo);
      for (int r = 0; r < 2; ++r) {
        auto cache = m1.new_cache(512);
        if (r == 1) NIBBLE_CUDA_CHECK(cudaProfilerStart());
        auto t1 = Clock::now();
        Tensor lg = m1.forward_last(random_ids(512, s.V, 5), cache.get());
        if (r == 1) NIBBLE_CUDA_CHECK(cudaProfilerStop());
        std::printf("%s prefill-512 %s: %.1f ms\n", s.name, r ? "profiled" : "warm-up", since(t1) * 1e3);
      }
      continue;
    }
    // the first load warms the CUDA context and kernels; the second is timed
    { auto warm = AutoModelForCausalLM::from_pretrained(mdir, lo); }
    NIBBLE_CUDA_CHECK(cudaDeviceSynchronize());
    const uint64_t before = cuda::pool_stats(0).used;
    cuda::reset_pool_peak(0);
    auto t0 = Clock::now();
    CausalLM model = AutoModelForCausalLM::from_pretrained(mdir, lo);
    NIBBLE_CUDA_CHECK(cudaDeviceSynchronize());
    const double load_s = since(t0);
    const cuda::PoolStats ps = cuda::pool_stats(0);
    const double held = double(ps.used - before), peak = double(ps.used_high - before);
    const Peer peer = peer_for(s.name);
    std::printf(
        "%s NF4+DQ bf16: load + quantize %.2f s (transformers + bnb %.2f s), held %.2f GB, peak during "
        "load %.2f GB\n",
        s.name, load_s, peer.bnb_load, held * 1e-9, peak * 1e-9);
    const int64_t V = s.V;
    std::map<std::pair<int64_t, int64_t>, double> one_gpu_tok_s;  // (B, ctx) -> decode tok/s
    // A decode result's row of the JSON (the callers add their own fields).
    auto decode_row = [&](int64_t B, int64_t ctx, double tok_s, double load) {
      return json{{"device", dev_name}, {"model", s.name}, {"format", "nf4_dq"}, {"compute", "bf16"},
                  {"batch", B},         {"context", ctx},  {"decode_tok_s", tok_s}, {"load_s", load}};
    };

    // prefill 512: one sequence, logits of the last row
    std::vector<double> pt;
    for (int r = 0; r < 4; ++r) {
      auto cache = model.new_cache(512);
      auto ids = random_ids(512, V, uint64_t(100 + r));
      auto t1 = Clock::now();
      Tensor lg = model.forward_last(ids, cache.get());
      if (r > 0) pt.push_back(since(t1));
      (void)argmax_row(lg, 0);
    }
    const double prefill_tok_s = 512.0 / median(pt);
    const double flops = 2.0 * double(bench::llama_params(s) - s.V * s.C) * 512 +
                         // attention: QK^T and PV over the causal half
                         2.0 * 2.0 * double(s.L) * double(s.Hq * s.D) * 512.0 * 512.0 / 2.0;
    const double prefill_floor = 512.0 / (flops / mm_rate);
    std::printf(
        "  prefill-512: %.0f tok/s (matrix floor %.0f tok/s: %.0f%%; llama.cpp Q4_0 %.0f, transformers "
        "+ bnb %.0f)\n",
        prefill_tok_s, prefill_floor, 100 * prefill_tok_s / prefill_floor, peer.llamacpp_q4_prefill,
        peer.bnb_prefill);
    rows.push_back({{"device", dev_name},
                    {"model", s.name},
                    {"format", "nf4_dq"},
                    {"compute", "bf16"},
                    {"batch", 1},
                    {"context", 512},
                    {"prefill_tok_s", prefill_tok_s},
                    {"prefill_floor_tok_s", prefill_floor},
                    {"decode_tok_s", nullptr},
                    {"load_s", load_s},
                    {"peak_gpu_bytes", peak},
                    {"held_gpu_bytes", held},
                    {"copy_gbs", copy_bw * 1e-9},
                    {"matmul_tflops", mm_rate * 1e-12},
                    {"peers_h200", peer_json(peer)}});

    // decode: B sequences at context ctx, greedy, one host round trip per step
    for (int64_t ctx : contexts)
      for (int64_t B : batches) {
        const double tok_s = decode_tok_s(model, B, ctx, steps, V);
        one_gpu_tok_s[{B, ctx}] = tok_s;
        // bytes a step must read: every weight once, each sequence's K and V (bf16)
        const double kv =
            double(B) * 2.0 * double(s.L) * double(ctx + 4 + steps / 2) * double(s.Hkv * s.D) * 2.0;
        const double floor_tok_s = double(B) / ((held + kv) / copy_bw);
        std::printf(
            "  decode B=%lld ctx=%lld: %.1f tok/s (bandwidth floor %.0f tok/s: %.0f%%; llama.cpp Q4_0 "
            "%.0f, transformers + bnb %.1f at B=1)\n",
            (long long)B, (long long)ctx, tok_s, floor_tok_s, 100 * tok_s / floor_tok_s,
            peer.llamacpp_q4_decode, peer.bnb_decode);
        json row = decode_row(B, ctx, tok_s, load_s);
        row.update({{"decode_floor_tok_s", floor_tok_s},
                    {"prefill_tok_s", nullptr},
                    {"peak_gpu_bytes", peak},
                    {"held_gpu_bytes", held},
                    {"copy_gbs", copy_bw * 1e-9},
                    {"peers_h200", peer_json(peer)}});
        rows.push_back(row);
      }
    if (!max_memory.empty()) {  // the same shape split by device_map="auto" under --max-memory
      LoadOptions so = lo;
      so.device_map = "auto";
      so.max_memory = parse_max_memory(max_memory);
      so.quantization_config->llm_int8_enable_fp32_cpu_offload = true;
      auto t2 = Clock::now();
      CausalLM split = AutoModelForCausalLM::from_pretrained(mdir, so);
      const double split_load_s = since(t2);
      std::map<std::string, int64_t> layers_on;
      for (const auto& [module, device] : split.hf_device_map())
        if (module.find(".layers.") != std::string::npos) ++layers_on[device];
      std::string where;
      for (const auto& [device, n] : layers_on) where += detail::str(where.empty() ? "" : ", ", n, " on ", device);
      std::printf("%s split under max_memory %s: layers %s (load %.2f s)\n", s.name, max_memory.c_str(),
                  where.c_str(), split_load_s);
      const int64_t gpu_layers = layers_on.count("cuda:0") ? layers_on["cuda:0"] : 0;
      for (int64_t ctx : contexts)
        for (int64_t B : batches) {
          const double tok_s = decode_tok_s(split, B, ctx, steps, V), one = one_gpu_tok_s[{B, ctx}];
          // a step's time, and the GPU layers' share of it estimated from the one-GPU step
          const double step_ms = 1e3 * double(B) / tok_s, one_ms = 1e3 * double(B) / one;
          const double gpu_ms = one_ms * double(gpu_layers) / double(s.L);
          std::printf(
              "  split decode B=%lld ctx=%lld: %.2f tok/s (one GPU %.1f): a step %.1f ms, of which the %lld GPU "
              "layers ~%.1f ms and the %lld CPU layers, head and crossings ~%.1f ms\n",
              (long long)B, (long long)ctx, tok_s, one, step_ms, (long long)gpu_layers, gpu_ms,
              (long long)(s.L - gpu_layers), step_ms - gpu_ms);
          json row = decode_row(B, ctx, tok_s, split_load_s);
          row.update({{"max_memory", max_memory},
                      {"layers_on", layers_on},
                      {"one_gpu_decode_tok_s", one},
                      {"step_ms", step_ms},
                      {"gpu_layers_ms_estimate", gpu_ms},
                      {"decode_floor_tok_s", nullptr},  // CPU and GPU bandwidth mixed: see one_gpu_decode_tok_s
                      {"peers_h200", peer_json(peer)}});
          rows.push_back(row);
        }
    }
    if (!keep) fs::remove_all(mdir);
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
