// Microbenchmark of the CPU forward ops: GEMV (M = 1) and GEMM (M = 128) on a 4096 x 4096
// weight stored as bf16, NF4 (compute bf16) and LLM.int8, plus attention prefill/decode, on
// one thread and on all threads. Prints weight GB/s (bytes of the stored weight per call /
// time), GFLOP/s (2 M N K / time) and, as the floor a GEMV is held against, the measured
// copy bandwidth of this machine. Median of several timed runs after a warm-up. "cpu ms" is
// the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID; at 1 thread, the whole op's): on a
// machine shared with other work it is steadier than wall time.
//   nn_cpu [--quick]
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "nibble/quant.h"
#include "nibble/thread_pool.h"
#include "ops/nn_ops.h"

using namespace nibble;

namespace {

struct Timing {
  double median, best, cpu_median;
};

double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

Timing time_runs(const std::function<void()>& fn, double budget_s) {
  fn();  // warm-up
  std::vector<double> t, c;
  auto start = std::chrono::steady_clock::now();
  do {
    auto a = std::chrono::steady_clock::now();
    const double c0 = thread_cpu_s();
    fn();
    c.push_back(thread_cpu_s() - c0);
    auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double>(b - a).count());
  } while (t.size() < 3 ||
           (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < budget_s &&
            t.size() < 50));
  std::sort(t.begin(), t.end());
  std::sort(c.begin(), c.end());
  return {t[t.size() / 2], t.front(), c[c.size() / 2]};
}

Tensor randn(const Shape& s, DType dt, std::mt19937_64& rng, float scale = 1.0f) {
  Tensor t = Tensor::empty(s, dt);
  std::normal_distribution<float> nd(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) store_from_f32(t.data_ptr(), dt, i, nd(rng));
  return t;
}

// Copy bandwidth (read + write bytes / s) over a buffer far larger than the caches.
double copy_gbps(double budget) {
  const size_t n = size_t(256) << 20;
  std::vector<char> a(n, 1), b(n, 2);
  const int64_t chunks = 64;
  double s = time_runs(
                 [&] {
                   parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
                     for (int64_t c = c0; c < c1; ++c)
                       std::memcpy(b.data() + c * (n / chunks), a.data() + c * (n / chunks), n / chunks);
                   });
                 },
                 budget)
                 .best;
  return 2.0 * double(n) / s / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const double budget = quick ? 0.2 : 1.0;
  const int64_t N = 4096, K = 4096;
  std::mt19937_64 rng(42);
  Tensor w_bf16 = randn({N, K}, DType::BF16, rng, 0.02f);
  Quantized4 q = quantize_4bit(w_bf16, DType::NF4, 64, true);
  Tensor absmax = dequantize_absmax(q.state);
  Int8Rowwise w8 = int8_vectorwise_quant(w_bf16.to(DType::F16), 0.0f);
  const double bytes_bf16 = double(w_bf16.nbytes());
  const double bytes_nf4 = double(q.packed.nbytes() + q.state.state_bytes());
  const double bytes_i8 = double(w8.CA.nbytes() + w8.SCA.nbytes());

  const int all = num_threads();
  std::printf("nibble CPU ops, %lld x %lld weight; threads available: %d\n", (long long)N, (long long)K, all);
  std::printf("median (best) of timed runs; weight GB/s and GFLOP/s from the median\n");
  std::printf("%-34s %8s %18s %11s %10s %9s\n", "case", "threads", "ms", "weight GB/s", "GFLOP/s", "cpu ms");
  for (int threads : {1, all}) {
    set_num_threads(threads);
    std::printf("%-34s %8d %18s %11.1f %10s\n", "memcpy (read+write, best)", threads, "-", copy_gbps(budget),
                "-");
    for (int64_t M : {int64_t(1), int64_t(128)}) {
      Tensor x = randn({M, K}, DType::F32, rng);
      const double flop = 2.0 * double(M) * double(N) * double(K);
      struct Case {
        const char* name;
        double bytes;
        std::function<void()> fn;
      };
      const std::vector<Case> cases = {
          {"bf16 linear (round bf16)", bytes_bf16, [&] { ops::linear(x, w_bf16, Tensor(), DType::BF16); }},
          {"nf4+dq 4bit (compute bf16)", bytes_nf4,
           [&] { ops::linear_4bit(x, q.packed, q.state, absmax, Tensor(), DType::BF16); }},
          {"nf4+dq 4bit (compute f32)", bytes_nf4,
           [&] { ops::linear_4bit(x, q.packed, q.state, absmax, Tensor(), DType::F32); }},
          {"int8 (threshold 6)", bytes_i8, [&] { ops::linear_int8(x, w8.CA, w8.SCA, Tensor(), 6.0f); }},
      };
      for (const Case& c : cases) {
        Timing t = time_runs(c.fn, budget);
        char name[64];
        std::snprintf(name, sizeof name, "%s M=%lld", c.name, (long long)M);
        std::printf("%-34s %8d %9.2f (%6.2f) %11.2f %10.1f %9.2f\n", name, threads, t.median * 1e3, t.best * 1e3,
                    c.bytes / t.median / 1e9, flop / t.median / 1e9, t.cpu_median * 1e3);
      }
    }
    // attention, Llama-2-7B head shape (32 heads of 128), f32
    for (auto [T, S] : {std::pair<int64_t, int64_t>{512, 512}, {1, 4096}}) {
      Tensor qa = randn({T, 32, 128}, DType::F32, rng), k = randn({S, 32, 128}, DType::F32, rng);
      Tensor v = randn({S, 32, 128}, DType::F32, rng);
      ops::AttentionOptions o;
      o.scale = 1.0f / std::sqrt(128.0f);
      o.q_offset = S - T;
      Timing t = time_runs([&] { ops::attention(qa, k, v, o); }, budget);
      double pairs = T == 1 ? double(S) : double(T) * double(T + 1) / 2;  // causal (query, key) pairs
      double fl = 2.0 * 2.0 * 128.0 * 32.0 * pairs;
      char name[64];
      std::snprintf(name, sizeof name, "attention T=%lld S=%lld", (long long)T, (long long)S);
      std::printf("%-34s %8d %9.2f (%6.2f) %11s %10.1f %9.2f\n", name, threads, t.median * 1e3, t.best * 1e3, "-",
                  fl / t.median / 1e9, t.cpu_median * 1e3);
    }
  }
  set_num_threads(all);
  return 0;
}
