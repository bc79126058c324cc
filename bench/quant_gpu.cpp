// GPU quantization benchmark: NF4 quantize (plain and with double quantization) and
// dequantize of bf16 weights of real shapes, each as a fraction of the device-to-device copy
// bandwidth measured in the same run (DESIGN.md §5). Kernels are timed through the
// enqueue-only launch API with CUDA events between back-to-back runs (no host sync inside the
// timed region), median of many runs, rotating among several inputs so the 50 MB L2 cannot
// hold them; every output is checked once against the CPU backend before timing.
//   quant_gpu [--json PATH] [--reps N]
// Prints "no CUDA device" and exits 0 when the build or the machine has no GPU.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/quant.h"
#include "nibble/tensor.h"
#ifdef NIBBLE_WITH_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/check.h"
#include "backends/cuda/quant_launch.h"
#endif

using namespace nibble;

#ifdef NIBBLE_WITH_CUDA
namespace {

// Median of per-run times (µs) of reps back-to-back runs of op(r), after `warm` untimed runs.
double median_us(const std::function<void(int)>& op, int reps, int warm = 5) {
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

// Device-to-device copy of 1 GiB: bytes read + written per second (GB/s, 1e9).
double copy_bandwidth_gbs() {
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  NIBBLE_CUDA_CHECK(cudaMalloc(&a, bytes));
  NIBBLE_CUDA_CHECK(cudaMalloc(&b, bytes));
  NIBBLE_CUDA_CHECK(cudaMemset(a, 1, bytes));
  double us = median_us(
      [&](int) { NIBBLE_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 20, 3);
  NIBBLE_CUDA_CHECK(cudaFree(a));
  NIBBLE_CUDA_CHECK(cudaFree(b));
  return 2.0 * double(bytes) / (us * 1e-6) / 1e9;
}

// normal-ish bf16 weights (sum of four uniforms), cheap to draw for 45M elements.
Tensor random_bf16(int64_t n, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::BF16);
  uint16_t* p = t.data<uint16_t>();
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&] {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    return float(s >> 40) * (1.0f / 16777216.0f);
  };
  for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16((next() + next() + next() + next() - 2.0f) * 0.035f);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  Tensor x = a.to(Device::cpu()).contiguous(), y = b.to(Device::cpu()).contiguous();
  return x.nbytes() == y.nbytes() && std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

struct Row {
  std::string shape, op;
  double us, gbs_input, frac_copy;
  int64_t bytes_moved;
};

}  // namespace
#endif

int main(int argc, char** argv) {
  std::string json_path;
  int reps = 100;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json" && i + 1 < argc)
      json_path = argv[++i];
    else if (a == "--reps" && i + 1 < argc)
      reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: quant_gpu [--json PATH] [--reps N]\n");
      return 2;
    }
  }
#ifndef NIBBLE_WITH_CUDA
  (void)reps;
  std::puts("no CUDA device");
  return 0;
#else
  if (!cuda_available()) {
    std::puts("no CUDA device");
    return 0;
  }
  cudaDeviceProp prop{};
  NIBBLE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = copy_bandwidth_gbs();
  std::printf("device: %s, %d SMs; copy bandwidth (read+write): %.0f GB/s\n", prop.name,
              prop.multiProcessorCount, copy_gbs);

  constexpr int64_t kBlock = 64;
  constexpr int kInputs = 4;  // rotated inputs: 4 x 32..90 MB > L2
  std::vector<Row> rows;
  bool all_ok = true;
  for (auto [rows_n, cols_n] : {std::pair<int64_t, int64_t>{4096, 4096}, {11008, 4096}}) {
    const int64_t n = rows_n * cols_n, nb = (n + kBlock - 1) / kBlock, nb2 = (nb + 255) / 256;
    const std::string shape = std::to_string(rows_n) + "x" + std::to_string(cols_n);
    std::vector<Tensor> xs;
    for (int k = 0; k < kInputs; ++k)
      xs.push_back(random_bf16(n, uint64_t(rows_n * 7 + k)).view({rows_n, cols_n}));
    std::vector<Tensor> xd;
    for (auto& x : xs) xd.push_back(x.to(Device::cuda()));

    // Check once against the CPU backend (itself tested against the scalar reference).
    Quantized4 gq = quantize_4bit(xd[0], DType::NF4, kBlock, false),
               cq = quantize_4bit(xs[0], DType::NF4, kBlock, false);
    Quantized4 gd = quantize_4bit(xd[0], DType::NF4, kBlock, true),
               cd = quantize_4bit(xs[0], DType::NF4, kBlock, true);
    bool ok = same_bytes(gq.packed, cq.packed) && same_bytes(gq.state.absmax, cq.state.absmax) &&
              same_bytes(gd.state.absmax, cd.state.absmax) &&
              same_bytes(gd.state.nested_absmax, cd.state.nested_absmax) &&
              gd.state.offset == cd.state.offset &&
              same_bytes(dequantize_4bit(gq.packed, gq.state), dequantize_4bit(cq.packed, cq.state)) &&
              same_bytes(dequantize_4bit(gd.packed, gd.state), dequantize_4bit(cd.packed, cd.state));
    std::printf("%s: GPU output %s the CPU backend's\n", shape.c_str(), ok ? "matches" : "DIFFERS FROM");
    all_ok = all_ok && ok;

    // Output buffers: [n/2] packed, [nb] absmax, [nb] q, [nb2] absmax2, offset, [n] bf16.
    Tensor packed = Tensor::empty({n / 2}, DType::U8, Device::cuda());
    Tensor absmax = Tensor::empty({nb}, DType::F32, Device::cuda());
    Tensor q8 = Tensor::empty({nb}, DType::U8, Device::cuda());
    Tensor absmax2 = Tensor::empty({nb2}, DType::F32, Device::cuda());
    Tensor offset = Tensor::empty({1}, DType::F32, Device::cuda());
    std::vector<Tensor> outs;
    for (int k = 0; k < kInputs; ++k) outs.push_back(Tensor::empty({n}, DType::BF16, Device::cuda()));
    std::vector<Tensor> packs;  // quantized copies of every input, for dequantization
    for (int k = 0; k < kInputs; ++k)
      packs.push_back(quantize_4bit(xd[size_t(k)], DType::NF4, kBlock, true).packed);
    Tensor abs_plain = gq.state.absmax;  // [nb] f32 on the device

    auto add = [&](const std::string& op, double us, int64_t bytes) {
      rows.push_back({shape, op, us, 2.0 * double(n) / (us * 1e-6) / 1e9,
                      double(bytes) / (us * 1e-6) / 1e9 / copy_gbs, bytes});
    };
    auto xin = [&](int r) { return xd[size_t(r % kInputs)].data_ptr(); };
    add("quantize nf4",
        median_us(
            [&](int r) {
              cuda::launch::quantize_4bit(xin(r), DType::BF16, n, kBlock, DType::NF4, packed.data<uint8_t>(),
                                          absmax.data<float>(), nullptr);
            },
            reps),
        2 * n + n / 2 + 4 * nb);
    // the same kernel with one CTA per group (no cross-group prefetch), for comparison
    setenv("NIBBLE_CUDA_QUANT4_GRID", "full", 1);
    add("quantize nf4 (one CTA per group)",
        median_us(
            [&](int r) {
              cuda::launch::quantize_4bit(xin(r), DType::BF16, n, kBlock, DType::NF4, packed.data<uint8_t>(),
                                          absmax.data<float>(), nullptr);
            },
            reps),
        2 * n + n / 2 + 4 * nb);
    unsetenv("NIBBLE_CUDA_QUANT4_GRID");
    add("quantize nf4 + double quant",
        median_us(
            [&](int r) {
              cuda::launch::quantize_4bit(xin(r), DType::BF16, n, kBlock, DType::NF4, packed.data<uint8_t>(),
                                          absmax.data<float>(), nullptr);
              cuda::launch::double_quantize_absmax(absmax.data<float>(), nb, q8.data<uint8_t>(),
                                                   absmax2.data<float>(), offset.data<float>(), nullptr);
            },
            reps),
        2 * n + n / 2 + nb + 4 * nb2 + 4);
    add("dequantize nf4 -> bf16",
        median_us(
            [&](int r) {
              cuda::launch::dequantize_4bit(packs[size_t(r % kInputs)].data<uint8_t>(),
                                            abs_plain.data<float>(), n, kBlock, DType::NF4,
                                            outs[size_t(r % kInputs)].data_ptr(), DType::BF16, nullptr);
            },
            reps),
        n / 2 + 4 * nb + 2 * n);
    add("dequantize nf4 (nested absmax) -> bf16",
        median_us(
            [&](int r) {
              cuda::launch::dequantize_nested_absmax(gd.state.absmax.data<uint8_t>(),
                                                     gd.state.nested_absmax.data<float>(), gd.state.offset,
                                                     nb, absmax.data<float>(), nullptr);
              cuda::launch::dequantize_4bit(packs[size_t(r % kInputs)].data<uint8_t>(), absmax.data<float>(),
                                            n, kBlock, DType::NF4, outs[size_t(r % kInputs)].data_ptr(),
                                            DType::BF16, nullptr);
            },
            reps),
        n / 2 + nb + 4 * nb2 + 2 * n);
  }
  NIBBLE_CUDA_CHECK(cudaDeviceSynchronize());

  std::printf("\n%-10s %-40s %10s %14s %12s\n", "shape", "op", "us", "GB/s(16b in)", "frac copy");
  for (const auto& r : rows)
    std::printf("%-10s %-40s %10.1f %14.0f %11.1f%%\n", r.shape.c_str(), r.op.c_str(), r.us, r.gbs_input,
                100.0 * r.frac_copy);
  if (!json_path.empty()) {
    nlohmann::ordered_json j;
    j["bench"] = "quant_gpu";
    j["device"] = prop.name;
    j["sms"] = prop.multiProcessorCount;
    j["copy_gbs"] = copy_gbs;
    j["reps"] = reps;
    j["blocksize"] = kBlock;
    j["checked_against_cpu"] = all_ok;
    j["notes"] =
        "us: median over reps of back-to-back runs (CUDA events), inputs rotated among 4; gbs_input: bytes "
        "of "
        "the bf16 input / time; frac_copy: (input + output bytes) / time / copy_gbs";
    for (const auto& r : rows)
      j["rows"].push_back({{"shape", r.shape},
                           {"op", r.op},
                           {"us", r.us},
                           {"gbs_input", r.gbs_input},
                           {"bytes_moved", r.bytes_moved},
                           {"frac_copy", r.frac_copy}});
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return all_ok ? 0 : 1;
#endif
}
