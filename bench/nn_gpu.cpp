// GPU forward-op benchmark (backends/cuda/nn_cuda.h): attention decode over a KV cache at
// contexts 128 / 4096 / 16384 for Llama-2-7B (Hq = Hkv = 32, D = 128) and Llama-3.1-8B (Hq 32,
// Hkv 8) at batch 1 in bf16 and f32 KV, as KV bytes read per second against the
// device-to-device copy bandwidth measured in the same run; prefill-512 attention; RMSNorm on
// [1, 4096] and [512, 4096] (launch-latency bound: µs). CUDA events around back-to-back runs,
// median after warm-up; every configuration's output is checked against the CPU backend first.
//   nn_gpu [--json PATH] [--reps N]
// Prints "no CUDA device" and exits 0 when the build or the machine has no GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cpu/nn_cpu.h"
#include "nibble/dtype.h"
#include "nibble/tensor.h"
#ifdef NIBBLE_WITH_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/check.h"
#include "backends/cuda/nn_cuda.h"
#endif

using namespace nibble;

#ifdef NIBBLE_WITH_CUDA
namespace {

double median_us(const std::function<void()>& op, int reps, int warm = 5) {
  for (int w = 0; w < warm; ++w) op();
  NIBBLE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<cudaEvent_t> ev(size_t(reps) + 1);
  for (auto& e : ev) NIBBLE_CUDA_CHECK(cudaEventCreate(&e));
  NIBBLE_CUDA_CHECK(cudaEventRecord(ev[0]));
  for (int r = 0; r < reps; ++r) {
    op();
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

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t n) { NIBBLE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 16))); }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

std::vector<float> randn(size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

struct Row {
  std::string op, shape;
  double us, gbs, frac_copy;
  bool ok;
};

}  // namespace
#endif

int main(int argc, char** argv) {
#ifndef NIBBLE_WITH_CUDA
  (void)argc, (void)argv;
  std::printf("no CUDA device\n");
  return 0;
#else
  std::string json_path;
  int reps = 50;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc)
      json_path = argv[++i];
    else if (a == "--reps" && i + 1 < argc)
      reps = std::atoi(argv[++i]);
  }
  if (!cuda_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  NIBBLE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::mt19937_64 rng(1234);
  std::vector<Row> rows;
  // copy bandwidth: 1 GiB D2D, read + written
  double copy_gbs;
  {
    const size_t bytes = size_t(1) << 30;
    Buf a(bytes), b(bytes);
    NIBBLE_CUDA_CHECK(cudaMemset(a.p, 1, bytes));
    const double us = median_us([&] { NIBBLE_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); },
                                20);
    copy_gbs = 2.0 * double(bytes) / us * 1e-3;
    rows.push_back({"copy_d2d", "1GiB", us, copy_gbs, 1.0, true});
  }
  bool all_ok = true;
  auto attn = [&](const char* model, int64_t Hq, int64_t Hkv, int64_t T, int64_t S, DType kv) {
    const int64_t D = 128;
    auto q = randn(size_t(T * Hq * D), rng), k = randn(size_t(S * Hkv * D), rng), v = randn(k.size(), rng);
    std::vector<uint8_t> kb(size_t(dtype_nbytes(kv, int64_t(k.size())))), vb(kb.size());
    for (size_t i = 0; i < k.size(); ++i) {
      store_from_f32(kb.data(), kv, int64_t(i), k[i]), k[i] = load_as_f32(kb.data(), kv, int64_t(i));
      store_from_f32(vb.data(), kv, int64_t(i), v[i]), v[i] = load_as_f32(vb.data(), kv, int64_t(i));
    }
    // 4 caches rotated so repeated runs do not all hit L2
    const int nbuf = 4;
    std::vector<std::unique_ptr<Buf>> dk, dv;
    for (int i = 0; i < nbuf; ++i) {
      dk.push_back(std::make_unique<Buf>(kb.size())), dv.push_back(std::make_unique<Buf>(vb.size()));
      NIBBLE_CUDA_CHECK(cudaMemcpy(dk.back()->p, kb.data(), kb.size(), cudaMemcpyHostToDevice));
      NIBBLE_CUDA_CHECK(cudaMemcpy(dv.back()->p, vb.data(), vb.size(), cudaMemcpyHostToDevice));
    }
    Buf dq(q.size() * 4), dout(q.size() * 4);
    NIBBLE_CUDA_CHECK(cudaMemcpy(dq.p, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    cuda::Attention a;
    a.T = T, a.S = S, a.Hq = Hq, a.Hkv = Hkv, a.D = D, a.Dv = D, a.scale = 1.0f / std::sqrt(float(D));
    a.q_offset = S - T, a.q = static_cast<float*>(dq.p), a.ldq = Hq * D, a.k = dk[0]->p, a.v = dv[0]->p;
    a.kv_dtype = kv, a.ldk = Hkv * D, a.ldv = Hkv * D, a.out = static_cast<float*>(dout.p);
    const size_t wb = cuda::attention_workspace_bytes(a);
    Buf ws(wb);
    cuda::Launch l;
    l.workspace = ws.p, l.workspace_bytes = wb;
    cuda::attention(l, a);
    std::vector<float> got(q.size()), ref(q.size());
    NIBBLE_CUDA_CHECK(cudaMemcpy(got.data(), dout.p, got.size() * 4, cudaMemcpyDeviceToHost));
    cpu::AttentionShape sh;
    sh.T = T, sh.S = S, sh.Hq = Hq, sh.Hkv = Hkv, sh.D = D, sh.Dv = D, sh.scale = a.scale, sh.q_offset = S - T;
    cpu::attention(q.data(), k.data(), v.data(), sh, ref.data());
    double mx = 0, err = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      mx = std::max(mx, double(std::fabs(ref[i]))), err = std::max(err, double(std::fabs(got[i] - ref[i])));
    const bool ok = err <= 2e-5 * mx;
    all_ok = all_ok && ok;
    int it = 0;
    const double us = median_us(
        [&] {
          a.k = dk[size_t(it % nbuf)]->p, a.v = dv[size_t(it % nbuf)]->p, ++it;
          cuda::attention(l, a);
        },
        reps);
    const double bytes = double(kb.size() + vb.size());
    char shape[96];
    std::snprintf(shape, sizeof shape, "%s T=%lld S=%lld %s", model, (long long)T, (long long)S,
                  dtype_name(kv));
    rows.push_back({T == 1 ? "attn_decode" : "attn_prefill", shape, us, bytes / us * 1e-3,
                    bytes / us * 1e-3 / copy_gbs, ok});
  };
  for (DType kv : {DType::BF16, DType::F32})
    for (int64_t S : {128, 4096, 16384}) {
      attn("llama2-7b", 32, 32, 1, S, kv);
      attn("llama3.1-8b", 32, 8, 1, S, kv);
    }
  attn("llama2-7b", 32, 32, 512, 512, DType::BF16);
  attn("llama3.1-8b", 32, 8, 512, 512, DType::BF16);
  attn("llama3.1-8b", 32, 8, 512, 512, DType::F32);
  for (int64_t M : {1, 512}) {
    const int64_t C = 4096;
    auto x = randn(size_t(M * C), rng), w = randn(size_t(C), rng);
    Buf dx(x.size() * 4), dw(w.size() * 4), dout(x.size() * 4);
    NIBBLE_CUDA_CHECK(cudaMemcpy(dx.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    NIBBLE_CUDA_CHECK(cudaMemcpy(dw.p, w.data(), w.size() * 4, cudaMemcpyHostToDevice));
    auto run = [&] {
      cuda::rms_norm({}, static_cast<float*>(dx.p), M, C, dw.p, DType::F32, 1e-6f, false,
                     static_cast<float*>(dout.p));
    };
    run();
    std::vector<float> got(x.size()), ref(x.size());
    NIBBLE_CUDA_CHECK(cudaMemcpy(got.data(), dout.p, got.size() * 4, cudaMemcpyDeviceToHost));
    cpu::rms_norm(x.data(), M, C, w.data(), DType::F32, 1e-6f, false, ref.data());
    bool ok = true;
    for (size_t i = 0; i < ref.size(); ++i) ok = ok && std::fabs(got[i] - ref[i]) <= 1e-5f * (1 + std::fabs(ref[i]));
    all_ok = all_ok && ok;
    const double us = median_us(run, reps * 4);
    const double bytes = double(2 * x.size() * 4);
    rows.push_back({"rms_norm", "[" + std::to_string(M) + ",4096] f32", us, bytes / us * 1e-3,
                    bytes / us * 1e-3 / copy_gbs, ok});
  }
  std::printf("%s, %d SMs\n%-14s %-34s %10s %10s %10s %4s\n", prop.name, prop.multiProcessorCount, "op", "shape",
              "us", "GB/s", "frac copy", "ok");
  for (const auto& r : rows)
    std::printf("%-14s %-34s %10.2f %10.0f %9.1f%% %4s\n", r.op.c_str(), r.shape.c_str(), r.us, r.gbs,
                100.0 * r.frac_copy, r.ok ? "yes" : "NO");
  if (!json_path.empty()) {
    nlohmann::ordered_json j;
    j["bench"] = "nn_gpu";
    j["device"] = prop.name;
    j["sms"] = prop.multiProcessorCount;
    j["copy_gbs"] = copy_gbs;
    j["reps"] = reps;
    j["checked_against_cpu"] = all_ok;
    j["notes"] =
        "us: median of back-to-back runs (CUDA events); attention GB/s: K+V bytes read / time, 4 caches rotated; "
        "rms_norm GB/s: x read + out written / time; frac_copy: GB/s / copy_gbs (read + written)";
    for (const auto& r : rows)
      j["rows"].push_back(
          {{"op", r.op}, {"shape", r.shape}, {"us", r.us}, {"gbs", r.gbs}, {"frac_copy", r.frac_copy}, {"ok", r.ok}});
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return all_ok ? 0 : 1;
#endif
}
