// CPU quantization throughput: NF4 (plain and double quant) quantize and dequantize of
// 4096x4096 and 11008x4096 bf16 weights, with 1 thread and all threads. Reports GB/s of
// 16-bit input (the unit), the median of repeated runs on fresh random data whose
// result is first checked against the scalar reference. Writes JSON with --json PATH.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/quant.h"
#include "nibble/thread_pool.h"
#include "backends/cpu/quant_cpu.h"
#include "quant/reference.h"

using namespace nibble;

namespace {

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

Tensor random_bf16(int64_t rows, int64_t cols, uint64_t seed) {
  Tensor t = Tensor::empty({rows, cols}, DType::BF16);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  auto* p = t.data<uint16_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = f32_to_bf16(nd(rng));
  return t;
}

template <typename F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  f();  // warm-up
  for (int i = 0; i < reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
  }
  const int all = int(std::max(1u, std::thread::hardware_concurrency()));
  nlohmann::ordered_json out;
  out["machine"] = cpu_name() + ", " + std::to_string(all) + " hardware threads";
  out["unit"] = "GB/s of 16-bit input (bytes of the bf16 weight / time)";
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  std::printf("machine: %s\n%-12s %-22s %7s %10s %9s\n", out["machine"].get<std::string>().c_str(), "shape", "op",
              "threads", "ms", "GB/s");
  uint64_t seed = 1;
  for (auto [r, c] : {std::pair<int64_t, int64_t>{4096, 4096}, {11008, 4096}}) {
    // check once against the scalar reference
    Tensor w = random_bf16(r, c, seed++);
    auto q = quantize_4bit(w, DType::NF4, 64, false);
    std::vector<uint8_t> p(size_t(w.numel() / 2));
    std::vector<float> a(size_t(w.numel() / 64));
    quant::ref::quantize_4bit(w.data_ptr(), DType::BF16, w.numel(), 64, DType::NF4, p.data(), a.data());
    if (std::memcmp(p.data(), q.packed.data_ptr(), p.size()) != 0) {
      std::fprintf(stderr, "fast path differs from the reference\n");
      return 1;
    }
    for (int threads : {1, all}) {
      set_num_threads(threads);
      double bytes = double(w.nbytes());
      struct Op { const char* name; std::function<void()> f; };
      Tensor fresh = random_bf16(r, c, seed++);
      Quantized4 qq = quantize_4bit(fresh, DType::NF4, 64, true);
      // kernels into preallocated buffers, then the public ops (allocation included)
      Tensor packed = Tensor::empty({fresh.numel() / 2}, DType::U8), absmax = Tensor::empty({fresh.numel() / 64}, DType::F32);
      Tensor deq = Tensor::empty(fresh.shape(), DType::BF16);
      Tensor am = dequantize_absmax(qq.state);
      std::memset(deq.data_ptr(), 0, deq.nbytes());
      std::memset(packed.data_ptr(), 0, packed.nbytes());
      std::vector<Op> ops = {
          {"kernel quantize nf4", [&] { cpu::quantize_4bit(fresh.data_ptr(), DType::BF16, fresh.numel(), 64, DType::NF4, packed.data<uint8_t>(), absmax.data<float>()); }},
          {"kernel dequantize nf4", [&] { cpu::dequantize_4bit(qq.packed.data<uint8_t>(), am.data<float>(), fresh.numel(), 64, DType::NF4, deq.data_ptr(), DType::BF16); }},
          {"op quantize nf4", [&] { quantize_4bit(fresh, DType::NF4, 64, false); }},
          {"op quantize nf4+dq", [&] { quantize_4bit(fresh, DType::NF4, 64, true); }},
          {"op dequantize nf4+dq", [&] { dequantize_4bit(qq.packed, qq.state); }},
      };
      for (auto& op : ops) {
        double s = median_seconds(reps, op.f);
        char shape[32];
        std::snprintf(shape, sizeof shape, "%lldx%lld", static_cast<long long>(r), static_cast<long long>(c));
        std::printf("%-12s %-24s %7d %10.2f %9.2f\n", shape, op.name, threads, s * 1e3, bytes / s / 1e9);
        rows.push_back({{"shape", {r, c}}, {"op", op.name}, {"threads", threads}, {"ms", s * 1e3},
                        {"gbps", bytes / s / 1e9}, {"gbps_per_thread", bytes / s / 1e9 / threads}});
      }
    }
  }
  out["results"] = rows;
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
  }
  return 0;
}
