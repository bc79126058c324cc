// GPU linear benchmark: the fused 4-bit dequantize + GEMV (NF4 with double quant, FP4 plain;
// bf16 compute; M = 1/4/16) and the bf16 GEMV of an unquantized output head, each as a
// fraction of the device-to-device copy bandwidth measured in the same run. Bytes counted are
// those that must move: packed codes + absmax state + x + out (+ W for the dense head).
// Each shape rotates among enough weight copies that the working set exceeds 4x the L2;
// per-call time of bursts of back-to-back calls (as a decode step issues them), median of many
// bursts after warm-up, beside the time of one call between two events; every shape's
// output is checked against the CPU backend before timing.
//   linear_gpu [--json PATH] [--reps N] [--quick]
// Prints "no CUDA device" and exits 0 when the build or the machine has no GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cpu/linear_cpu.h"
#include "nibble/quant.h"
#include "nibble/tensor.h"
#include "quant/reference.h"
#ifdef NIBBLE_WITH_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/check.h"
#include "backends/cuda/linear_cuda.h"
#endif

using namespace nibble;

#ifdef NIBBLE_WITH_CUDA
namespace {

// Median of per-run times (µs) of reps back-to-back runs of op(r), after `warm` untimed runs.
double median_us(const std::function<void(int)>& op, int reps, int warm = 10) {
  for (int w = 0; w < warm; ++w) op(w);
  NIBBLE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<cudaEvent_t> ev(static_cast<size_t>(reps) + 1);
  for (auto& e : ev) NIBBLE_CUDA_CHECK(cudaEventCreate(&e));
  NIBBLE_CUDA_CHECK(cudaEventRecord(ev[0]));
  for (int r = 0; r < reps; ++r) {
    op(r);
    NIBBLE_CUDA_CHECK(cudaEventRecord(ev[size_t(r) + 1]));
  }
  NIBBLE_CUDA_CHECK(cudaEventSynchronize(ev.back()));
  std::vector<double> t(static_cast<size_t>(reps));
  for (int r = 0; r < reps; ++r) {
    float ms = 0;
    NIBBLE_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[size_t(r)], ev[size_t(r) + 1]));
    t[size_t(r)] = double(ms) * 1e3;
  }
  for (auto& e : ev) NIBBLE_CUDA_CHECK(cudaEventDestroy(e));
  std::nth_element(t.begin(), t.begin() + reps / 2, t.end());
  return t[size_t(reps) / 2];
}

// Per-call µs of back-to-back calls timed in bursts of `burst` between one event pair (median
// over reps / burst bursts): how a decode step issues them, so a kernel's prologue may overlap
// the previous one's end (programmatic dependent launch) and no event sits between them.
double burst_us(const std::function<void(int)>& op, int reps, int burst = 25) {
  const int bursts = std::max(3, reps / burst);
  int r = 0;
  const double us = median_us(
      [&](int) {
        for (int b = 0; b < burst; ++b) op(r++);
      },
      bursts, 2);
  return us / burst;
}

void* dev_copy(const void* src, size_t bytes) {
  void* p = nullptr;
  NIBBLE_CUDA_CHECK(cudaMalloc(&p, bytes));
  NIBBLE_CUDA_CHECK(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
  return p;
}

// Device-to-device copy of 1 GiB: bytes read + written per second (GB/s, 1e9).
double copy_bandwidth_gbs(int reps) {
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  NIBBLE_CUDA_CHECK(cudaMalloc(&a, bytes));
  NIBBLE_CUDA_CHECK(cudaMalloc(&b, bytes));
  NIBBLE_CUDA_CHECK(cudaMemset(a, 1, bytes));
  double us = median_us(
      [&](int) { NIBBLE_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, reps, 3);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * double(bytes) / us * 1e-3;
}

// abs_tol: of max|ref|; the 4-bit decode path (gemv_lut.h) rounds code values, not scaled
// weights, so it sits up to a weight rounding from the CPU's result (tested exactly in test_cuda).
bool close_enough(const std::vector<float>& got, const std::vector<float>& ref, float abs_tol = 3e-5f) {
  float maxref = 0;
  for (float r : ref) maxref = std::fmax(maxref, std::fabs(r));
  for (size_t i = 0; i < ref.size(); ++i)
    if (!(std::fabs(got[i] - ref[i]) <= 0x1p-7f * std::fabs(ref[i]) + abs_tol * maxref)) return false;
  return maxref > 0;
}

struct Row {
  std::string kind, fmt;
  int64_t M, N, K;
  double us, gbs, frac;  // back-to-back calls (burst_us)
  double us_event;       // one call between two events (median_us)
};

constexpr size_t kWorkingSet = size_t(256) << 20;  // > 4x the 60 MB L2

// bitsandbytes' matmul_4bit at M = 1, bf16, as a fraction of copy bandwidth (../shared/PEERS.md,
// one H200); -1 where PEERS.md has no row.
double bnb_fraction(const Row& r) {
  if (r.kind != "gemv_4bit" || r.M != 1 || r.K != 4096) return -1;
  if (r.N == 4096) return 0.06;
  if (r.N == 11008) return 0.12;
  if (r.N == 14336) return 0.14;
  if (r.N == 128256) return 0.28;
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int reps = 200;
  bool quick = false;  // --quick: the Llama-2-7B layer shapes only, NF4 + DQ
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick"))
      quick = true;
  }
  if (!cuda_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  NIBBLE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = copy_bandwidth_gbs(20);
  std::printf("device %s, L2 %d MB, D2D copy %.0f GB/s\n", prop.name, prop.l2CacheSize >> 20, copy_gbs);
  std::mt19937 g(1234);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<Row> rows;
  const int64_t shapes[][2] = {{4096, 4096},  {4096, 11008}, {11008, 4096}, {4096, 14336},
                               {14336, 4096}, {32000, 4096}, {128256, 4096}};  // weight [N, K]
  const int64_t Ms[] = {1, 4, 16};
  const std::vector<float> code2(dynamic_map_signed().begin(), dynamic_map_signed().end());
  float* d_code2 = static_cast<float*>(dev_copy(code2.data(), 256 * 4));
  for (auto [N, K] : shapes) {
    if (quick && N > 11008) continue;
    const int64_t n = N * K, nb = n / 64;
    std::vector<float> wf(static_cast<size_t>(n));
    for (auto& v : wf) v = u(g);
    for (int fmt = 0; fmt < (quick ? 1 : 2); ++fmt) {  // 0: NF4 + double quant, 1: FP4 plain
      const DType qt = fmt == 0 ? DType::NF4 : DType::FP4;
      std::vector<uint8_t> packed(size_t(n / 2));
      std::vector<float> absmax(static_cast<size_t>(nb));
      quant::ref::quantize_4bit(wf.data(), DType::F32, n, 64, qt, packed.data(), absmax.data());
      quant::ref::NestedAbsmax na;
      if (fmt == 0) {
        na = quant::ref::double_quantize_absmax(absmax.data(), nb);
        quant::ref::dequantize_nested_absmax(na.q.data(), na.absmax2.data(), na.offset, nb, absmax.data());
      }
      const size_t state = fmt == 0 ? size_t(nb) + na.absmax2.size() * 4 : size_t(nb) * 4;
      const size_t wbytes = packed.size() + state;
      const int copies = int(std::max<size_t>(1, (kWorkingSet + wbytes - 1) / wbytes));
      std::vector<float> qmap(dequant_table_4bit(qt), dequant_table_4bit(qt) + 16);
      float* d_qmap = static_cast<float*>(dev_copy(qmap.data(), 64));
      std::vector<cuda::Quant4Weight> ws(static_cast<size_t>(copies));
      std::vector<void*> allocs;
      for (auto& q : ws) {
        q.packed = static_cast<uint8_t*>(dev_copy(packed.data(), packed.size()));
        allocs.push_back((void*)q.packed);
        q.blocksize = 64;
        q.quant_type = qt;
        q.quant_map = d_qmap;
        if (fmt == 0) {
          q.absmax_q = static_cast<uint8_t*>(dev_copy(na.q.data(), na.q.size()));
          q.absmax2 = static_cast<float*>(dev_copy(na.absmax2.data(), na.absmax2.size() * 4));
          q.code2 = d_code2;
          q.offset = na.offset;
          allocs.push_back((void*)q.absmax_q);
          allocs.push_back((void*)q.absmax2);
        } else {
          q.absmax = static_cast<float*>(dev_copy(absmax.data(), absmax.size() * 4));
          allocs.push_back((void*)q.absmax);
        }
      }
      for (int64_t M : Ms) {
        std::vector<float> x(size_t(M * K));
        for (auto& v : x) v = u(g);
        float* d_x = static_cast<float*>(dev_copy(x.data(), x.size() * 4));
        float* d_out = nullptr;
        NIBBLE_CUDA_CHECK(cudaMalloc(&d_out, size_t(M * N) * 4));
        cuda::Launch l;
        std::vector<float> ref(size_t(M * N)), got(size_t(M * N));
        cpu::linear_4bit(x.data(), M, K, packed.data(), absmax.data(), 64, qt, N, nullptr, DType::BF16,
                         DType::BF16, ref.data());
        cuda::linear_4bit(l, d_x, M, K, ws[0], N, nullptr, DType::BF16, DType::BF16, d_out);
        NIBBLE_CUDA_CHECK(cudaMemcpy(got.data(), d_out, got.size() * 4, cudaMemcpyDeviceToHost));
        if (!close_enough(got, ref, 4e-3f)) {
          std::printf("MISMATCH 4-bit N=%lld K=%lld M=%lld\n", (long long)N, (long long)K, (long long)M);
          return 1;
        }
        const auto op = [&](int r) {
          cuda::linear_4bit(l, d_x, M, K, ws[size_t(r % copies)], N, nullptr, DType::BF16, DType::BF16,
                            d_out);
        };
        const double us_event = median_us(op, reps), us = burst_us(op, reps);
        const double bytes = double(wbytes) + double(M * K * 4) + double(M * N * 4);
        const double gbs = bytes / us * 1e-3;
        rows.push_back(
            {"gemv_4bit", fmt == 0 ? "nf4_dq" : "fp4", M, N, K, us, gbs, gbs / copy_gbs, us_event});
        cudaFree(d_x);
        cudaFree(d_out);
      }
      for (void* p : allocs) cudaFree(p);
      cudaFree(d_qmap);
    }
  }
  // bf16 GEMV of an unquantized output head.
  for (int64_t N : {int64_t(32000), int64_t(128256)}) {
    if (quick && N > 32000) continue;
    const int64_t K = 4096;
    std::vector<uint16_t> w(size_t(N * K));
    for (auto& v : w) v = f32_to_bf16(u(g));
    const size_t wbytes = w.size() * 2;
    const int copies = int(std::max<size_t>(1, (kWorkingSet * 2 + wbytes - 1) / wbytes));
    std::vector<void*> ws;
    for (int c = 0; c < copies; ++c) ws.push_back(dev_copy(w.data(), wbytes));
    std::vector<float> x(static_cast<size_t>(K));
    for (auto& v : x) v = u(g);
    float* d_x = static_cast<float*>(dev_copy(x.data(), x.size() * 4));
    float* d_out = nullptr;
    NIBBLE_CUDA_CHECK(cudaMalloc(&d_out, size_t(N) * 4));
    cuda::Launch l;
    std::vector<float> ref(static_cast<size_t>(N)), got(static_cast<size_t>(N));
    cpu::linear(x.data(), 1, K, w.data(), DType::BF16, N, nullptr, DType::BF16, DType::BF16, ref.data());
    cuda::linear(l, d_x, 1, K, ws[0], DType::BF16, N, nullptr, DType::BF16, DType::BF16, d_out);
    NIBBLE_CUDA_CHECK(cudaMemcpy(got.data(), d_out, got.size() * 4, cudaMemcpyDeviceToHost));
    if (!close_enough(got, ref)) {
      std::printf("MISMATCH bf16 head N=%lld\n", (long long)N);
      return 1;
    }
    const auto op = [&](int r) {
      cuda::linear(l, d_x, 1, K, ws[size_t(r % copies)], DType::BF16, N, nullptr, DType::BF16, DType::BF16,
                   d_out);
    };
    const double us_event = median_us(op, reps), us = burst_us(op, reps);
    const double gbs = (double(wbytes) + K * 4 + N * 4) / us * 1e-3;
    rows.push_back({"gemv_bf16", "bf16", 1, N, K, us, gbs, gbs / copy_gbs, us_event});
    for (void* p : ws) cudaFree(p);
    cudaFree(d_x);
    cudaFree(d_out);
  }
  std::printf("%-10s %-7s %4s %7s %6s %9s %8s %6s %9s\n", "kind", "fmt", "M", "N", "K", "us", "GB/s", "copy%",
              "us(event)");
  nlohmann::json out = nlohmann::json::array();
  for (const Row& r : rows) {
    std::printf("%-10s %-7s %4lld %7lld %6lld %9.2f %8.0f %5.1f%% %9.2f\n", r.kind.c_str(), r.fmt.c_str(),
                (long long)r.M, (long long)r.N, (long long)r.K, r.us, r.gbs, 100 * r.frac, r.us_event);
    out.push_back({{"machine", prop.name},
                   {"kind", r.kind},
                   {"format", r.fmt},
                   {"M", r.M},
                   {"N", r.N},
                   {"K", r.K},
                   {"compute", "bf16"},
                   {"median_us", r.us},
                   {"median_us_one_call_between_events", r.us_event},
                   {"gbs", r.gbs},
                   {"copy_gbs", copy_gbs},
                   {"fraction_of_copy", r.frac},
                   {"peer_bnb_matmul_4bit_fraction_of_copy_h200", bnb_fraction(r)}});
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(1) << "\n";
  return 0;
}
#else
int main() {
  std::printf("no CUDA device\n");
  return 0;
}
#endif
