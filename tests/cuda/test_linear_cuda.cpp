// The CUDA linear ops (backends/cuda/linear_cuda.h) against the CPU backend on fresh random
// inputs (seed printed): fp weights f32/f16/bf16 under every round_to, NF4/FP4 with plain and
// nested absmax at blocksizes 32..4096 (K a multiple of the blocksize or not, so blocks
// straddle rows), M in {1,2,3,7,16,17,64,513}, odd N and K, with and without bias. The output
// is poisoned with NaN first so every element must be written. Summation order is the only
// legitimate difference: |gpu - cpu| <= eps(dtype) * |cpu| + 3e-5 * max|cpu|. The 4-bit decode
// path of gemv_lut.h rounds the code value rather than the scaled weight: it is checked against
// its own formula in double (f32 sums) and against the CPU backend within one weight rounding.
// Skips without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "backends/cpu/linear_cpu.h"
#include "core/exec_context.h"
#include "nibble/dtype.h"
#include "nibble/quant.h"
#include "nibble/tensor.h"
#include "ops/nn_ops.h"
#include "quant/reference.h"
#include "test_support.h"
#ifdef NIBBLE_WITH_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/gemv_lut.h"
#include "backends/cuda/linear_cuda.h"
#include "backends/cuda/nn_cuda.h"
#endif

using namespace nibble;

#ifdef NIBBLE_WITH_CUDA
namespace {

// A device copy of a host vector, freed at scope exit.
struct DevBuf {
  void* p = nullptr;
  DevBuf() = default;
  explicit DevBuf(size_t bytes, const void* src = nullptr) {
    EXPECT_EQ(cudaMalloc(&p, bytes ? bytes : 1), cudaSuccess);
    if (src) {
      EXPECT_EQ(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  template <class T>
  explicit DevBuf(const std::vector<T>& v) : DevBuf(v.size() * sizeof(T), v.data()) {}
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

uint32_t fresh_seed() {
  uint32_t s = std::random_device{}();
  std::printf("test_linear_cuda seed %u\n", s);
  return s;
}

std::vector<float> randu(std::mt19937& g, int64_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

// v as raw elements of dt (f32/f16/bf16).
std::vector<uint8_t> encode(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> out(v.size() * size_t(dtype_bits(dt) / 8));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::F32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      uint16_t h = dt == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

float eps_of(DType dt) {
  return dt == DType::BF16 ? 0x1p-7f : dt == DType::F16 ? 0x1p-10f : 0.0f;
}

// Downloads out and compares it with ref element by element.
void expect_close(const DevBuf& d_out, const std::vector<float>& ref, DType out_dt, const char* what) {
  std::vector<float> got(ref.size());
  ASSERT_EQ(cudaMemcpy(got.data(), d_out.p, got.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  float maxref = 0.0f;
  for (float r : ref) maxref = std::fmax(maxref, std::fabs(r));
  ASSERT_GT(maxref, 0.0f) << what;
  int bad = 0;
  for (size_t i = 0; i < ref.size() && bad < 5; ++i) {
    const float tol = eps_of(out_dt) * std::fabs(ref[i]) + 3e-5f * maxref;
    if (!(std::fabs(got[i] - ref[i]) <= tol)) {
      ADD_FAILURE() << what << ": element " << i << " gpu " << got[i] << " cpu " << ref[i] << " tol " << tol;
      ++bad;
    }
  }
}

// n floats of NaN, so an element the kernel does not write fails the comparison.
std::vector<float> poison(int64_t n) {
  return std::vector<float>(static_cast<size_t>(n), std::nanf(""));
}

// The decode path of gemv_lut.h (M <= 16, K % 64 == 0, blocksize >= 64, 16-bit compute):
// the absmax scales each block's sum of ct(code value) * ct(x) instead of each weight.
bool lut_path(int64_t M, int64_t K, int64_t bs, DType ct) {
  return M <= 16 && K % 64 == 0 && bs >= 64 && ct != DType::F32;
}

float round_to(float v, DType dt) {
  return dt == DType::BF16 ? bf16_to_f32(f32_to_bf16(v)) : f16_to_f32(f32_to_f16(v));
}

// gemv_lut's result in double before its f32 summation and final rounding (ref), and the
// sums of |terms| that bound how far it may lie from it (tight, f32 sums) and from the CPU
// backend's dequantize-then-matmul result (wide: one weight rounding, 2^-8 or 2^-11 relative).
struct LutRef {
  std::vector<double> ref, abs_terms, abs_weights;
};
LutRef lut_reference(const std::vector<float>& x, int64_t M, int64_t K, const std::vector<uint8_t>& packed,
                     const std::vector<float>& absmax, int64_t bs, DType qt, int64_t N, const float* bias,
                     DType ct) {
  const float* table = dequant_table_4bit(qt);
  LutRef r;
  r.ref.assign(size_t(M * N), 0.0);
  r.abs_terms.assign(size_t(M * N), 0.0);
  r.abs_weights.assign(size_t(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0, at = 0.0, aw = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t e = n * K + k;
        const uint8_t byte = packed[size_t(e / 2)];
        const int code = e % 2 == 0 ? byte >> 4 : byte & 15;
        const double am = absmax[size_t(e / bs)];
        const double term =
            am * double(round_to(table[code], ct)) * double(round_to(x[size_t(m * K + k)], ct));
        acc += term;
        at += std::fabs(term);
        aw += std::fabs(double(table[code]) * am * double(x[size_t(m * K + k)]));
      }
      if (bias) acc += double(round_to(bias[n], ct));
      r.ref[size_t(m * N + n)] = acc;
      r.abs_terms[size_t(m * N + n)] = at;
      r.abs_weights[size_t(m * N + n)] = aw;
    }
  return r;
}

// The lut path against its own formula (f32 sums: 2^-16 of the |terms|, plus the final
// rounding) and against the CPU backend (the weight rounding: 2 u |w| |x| a term).
void expect_lut_close(const DevBuf& d_out, const LutRef& lr, const std::vector<float>& cpu, DType ct,
                      const char* what) {
  std::vector<float> got(cpu.size());
  ASSERT_EQ(cudaMemcpy(got.data(), d_out.p, got.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  const double u = ct == DType::BF16 ? 0x1p-8 : 0x1p-11;
  int bad = 0;
  for (size_t i = 0; i < cpu.size() && bad < 5; ++i) {
    const double own = eps_of(ct) * std::fabs(lr.ref[i]) + 0x1p-16 * lr.abs_terms[i];
    const double wide = eps_of(ct) * std::fabs(cpu[i]) + 2.5 * u * lr.abs_weights[i] + 1e-6;
    if (!(std::fabs(got[i] - lr.ref[i]) <= own)) {
      ADD_FAILURE() << what << ": element " << i << " gpu " << got[i] << " formula " << lr.ref[i] << " tol "
                    << own;
      ++bad;
    }
    if (!(std::fabs(got[i] - cpu[i]) <= wide)) {
      ADD_FAILURE() << what << ": element " << i << " gpu " << got[i] << " cpu " << cpu[i] << " tol " << wide;
      ++bad;
    }
  }
}

const int64_t kMs[] = {1, 2, 3, 7, 16, 17, 64, 513};

TEST(LinearCuda, DenseMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 g(fresh_seed());
  const DType dts[] = {DType::F32, DType::F16, DType::BF16};
  struct Shape {
    int64_t K, N;
  };
  // K % 32 == 0 with 16-bit W = round_to takes the tensor-core GEMV (M <= 16; {4096, 300}: K
  // slices, a partial row tile) or cuBLAS (M > 16)
  const Shape shapes[] = {{64, 40}, {67, 33}, {256, 129}, {1000, 17}, {4096, 300}};
  int cases = 0;
  for (const Shape s : shapes)
    for (int64_t M : kMs)
      for (DType wdt : dts)
        for (DType rt : dts) {
          const bool with_bias = (cases % 2) == 0;
          const DType bdt = dts[cases % 3];
          auto x = randu(g, M * s.K);
          auto w = encode(randu(g, s.N * s.K), wdt);
          auto b = encode(randu(g, s.N), bdt);
          std::vector<float> ref(size_t(M * s.N));
          cpu::linear(x.data(), M, s.K, w.data(), wdt, s.N, with_bias ? b.data() : nullptr, bdt, rt,
                      ref.data());
          DevBuf dx(x), dw(w), db(b);
          DevBuf dout(poison(M * s.N));
          DevBuf dws(cuda::linear_workspace_bytes(M, s.K, s.N, wdt, rt));
          cuda::Launch l;
          l.workspace = dws.p;
          l.workspace_bytes = cuda::linear_workspace_bytes(M, s.K, s.N, wdt, rt);
          cuda::linear(l, dx.as<float>(), M, s.K, dw.p, wdt, s.N, with_bias ? db.p : nullptr, bdt, rt,
                       dout.as<float>());
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          char what[160];
          std::snprintf(what, sizeof what, "linear M=%lld K=%lld N=%lld W=%s round_to=%s bias=%d",
                        (long long)M, (long long)s.K, (long long)s.N, dtype_name(wdt), dtype_name(rt),
                        int(with_bias));
          expect_close(dout, ref, rt, what);
          ++cases;
        }
  EXPECT_EQ(cases, 5 * 8 * 9);
}

TEST(LinearCuda, FourBitMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 g(fresh_seed());
  struct Shape {
    int64_t K, N, bs;
  };
  // K % bs != 0 in several: blocks of the flattened tensor straddle rows (and K odd).
  const Shape shapes[] = {{64, 33, 64},
                          {96, 21, 64},
                          {256, 37, 32},
                          {130, 19, 128},
                          {512, 45, 256},
                          {320, 23, 512},
                          {1024, 9, 1024},
                          {2048, 5, 4096},
                          {77, 13, 64},
                          // K % 128 == 0: the tensor-core GEMV for M <= 16 (K slices, partial
                          // row tiles, blocks of 32 and of whole rows), cuBLAS above
                          {4096, 300, 64},
                          {11008, 24, 64},  // 172 chunks of 64 codes: uneven K slices
                          {1536, 77, 32},
                          {2560, 40, 512}};
  const DType cts[] = {DType::F32, DType::BF16, DType::F16};
  const DType qts[] = {DType::NF4, DType::FP4};
  int cases = 0, lut_cases = 0;
  for (const Shape s : shapes)
    for (int64_t M : kMs)
      for (DType qt : qts)
        for (int nested = 0; nested < 2; ++nested) {
          const DType ct = cts[cases % 3];
          const bool with_bias = (cases % 2) == 1;
          const int64_t n = s.N * s.K, nb = (n + s.bs - 1) / s.bs;
          auto wf = randu(g, n);
          std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
          std::vector<float> absmax(static_cast<size_t>(nb));
          quant::ref::quantize_4bit(wf.data(), DType::F32, n, s.bs, qt, packed.data(), absmax.data());
          quant::ref::NestedAbsmax na;
          if (nested) {  // the reference uses the nested absmax as decoded
            na = quant::ref::double_quantize_absmax(absmax.data(), nb);
            quant::ref::dequantize_nested_absmax(na.q.data(), na.absmax2.data(), na.offset, nb,
                                                 absmax.data());
          }
          auto x = randu(g, M * s.K);
          auto b = encode(randu(g, s.N), DType::BF16);
          std::vector<float> ref(size_t(M * s.N));
          cpu::linear_4bit(x.data(), M, s.K, packed.data(), absmax.data(), s.bs, qt, s.N,
                           with_bias ? b.data() : nullptr, DType::BF16, ct, ref.data());
          std::vector<float> qmap(dequant_table_4bit(qt), dequant_table_4bit(qt) + 16);
          std::vector<float> code2(dynamic_map_signed().begin(), dynamic_map_signed().end());
          DevBuf dx(x), dp(packed), da(absmax), dq(na.q), da2(na.absmax2), dc2(code2), dm(qmap), db(b);
          cuda::Quant4Weight q;
          q.packed = dp.as<uint8_t>();
          q.blocksize = s.bs;
          q.quant_type = qt;
          q.quant_map = dm.as<float>();
          if (nested) {
            q.absmax_q = dq.as<uint8_t>();
            q.absmax2 = da2.as<float>();
            q.code2 = dc2.as<float>();
            q.offset = na.offset;
          } else {
            q.absmax = da.as<float>();
          }
          DevBuf dout(poison(M * s.N));
          DevBuf dws(cuda::linear_4bit_workspace_bytes(M, s.K, s.N, ct));
          cuda::Launch l;
          l.workspace = dws.p;
          l.workspace_bytes = cuda::linear_4bit_workspace_bytes(M, s.K, s.N, ct);
          cuda::linear_4bit(l, dx.as<float>(), M, s.K, q, s.N, with_bias ? db.p : nullptr, DType::BF16, ct,
                            dout.as<float>());
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          char what[160];
          std::snprintf(what, sizeof what,
                        "linear_4bit %s nested=%d M=%lld K=%lld N=%lld bs=%lld ct=%s bias=%d", dtype_name(qt),
                        nested, (long long)M, (long long)s.K, (long long)s.N, (long long)s.bs, dtype_name(ct),
                        int(with_bias));
          if (lut_path(M, s.K, s.bs, ct)) {
            std::vector<float> bf(static_cast<size_t>(s.N));
            for (int64_t i = 0; i < s.N; ++i)
              bf[size_t(i)] = bf16_to_f32(uint16_t(b[size_t(2 * i)] | b[size_t(2 * i + 1)] << 8));
            const LutRef lr =
                lut_reference(x, M, s.K, packed, absmax, s.bs, qt, s.N, with_bias ? bf.data() : nullptr, ct);
            expect_lut_close(dout, lr, ref, ct, what);
            ++lut_cases;
          } else {
            expect_close(dout, ref, ct, what);
          }
          ++cases;
        }
  EXPECT_EQ(cases, 13 * 8 * 4);
  EXPECT_GT(lut_cases, 40);
}

// One quantized weight on the device (NF4/FP4, plain or nested absmax) for the grouped tests.
struct DevQ4 {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
  std::unique_ptr<DevBuf> dp, dm, db, dq, da2, dc2, da;
  cuda::Quant4Weight q;
  DevQ4(std::mt19937& g, int64_t N, int64_t K, int64_t bs, DType qt, bool nested, const std::vector<uint8_t>& bias) {
    const int64_t n = N * K, nb = (n + bs - 1) / bs;
    auto wf = randu(g, n);
    packed.resize(size_t((n + 1) / 2));
    absmax.resize(size_t(nb));
    quant::ref::quantize_4bit(wf.data(), DType::F32, n, bs, qt, packed.data(), absmax.data());
    const std::vector<float> qmap(dequant_table_4bit(qt), dequant_table_4bit(qt) + 16);
    dp = std::make_unique<DevBuf>(packed);
    dm = std::make_unique<DevBuf>(qmap);
    db = std::make_unique<DevBuf>(bias);
    q.packed = dp->as<uint8_t>();
    q.blocksize = bs;
    q.quant_type = qt;
    q.quant_map = dm->as<float>();
    if (nested) {
      const auto na = quant::ref::double_quantize_absmax(absmax.data(), nb);
      dq = std::make_unique<DevBuf>(na.q);
      da2 = std::make_unique<DevBuf>(na.absmax2);
      q.absmax_q = dq->as<uint8_t>();
      q.absmax2 = da2->as<float>();
      q.code2 = nullptr;  // set by the caller: one table for the whole group, as the model has
      q.offset = na.offset;
    } else {
      da = std::make_unique<DevBuf>(absmax);
      q.absmax = da->as<float>();
    }
  }
};

std::vector<float> download(const DevBuf& d, size_t n) {
  std::vector<float> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d.p, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

// The grouped decode GEMV (q/k/v in one launch) and the gated one (act(gate) * up) against
// one gemv_lut_4bit call a weight: the same formula, only the K-slice split (and so the f32
// summation order) may differ, so each output is within 2 roundings of the compute dtype.
TEST(LinearCuda, FourBitGroupedAndGatedMatchSingleCalls) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 g(fresh_seed());
  struct Shape {
    int64_t K, N0, N1, N2, bs;
  };
  const Shape shapes[] = {{4096, 300, 64, 64, 64}, {1536, 77, 33, 33, 128}, {11008, 40, 17, 17, 64},
                          {256, 5, 200, 200, 256}};
  int cases = 0;
  for (const Shape s : shapes)
    for (int64_t M : {1, 3, 8, 9, 16})
      for (int nested = 0; nested < 2; ++nested) {
        const DType ct = cases % 2 ? DType::F16 : DType::BF16;
        const DType qt = cases % 3 ? DType::NF4 : DType::FP4;
        const bool with_bias = cases % 4 == 1;
        const int64_t Ns[3] = {s.N0, s.N1, s.N2};
        std::vector<std::unique_ptr<DevQ4>> ws;
        const std::vector<float> code2(dynamic_map_signed().begin(), dynamic_map_signed().end());
        DevBuf dc2(code2);
        for (int64_t N : Ns) {
          ws.push_back(std::make_unique<DevQ4>(g, N, s.K, s.bs, qt, nested, encode(randu(g, N), DType::BF16)));
          if (nested) ws.back()->q.code2 = dc2.as<float>();
        }
        auto x = randu(g, M * s.K);
        DevBuf dx(x);
        std::vector<std::unique_ptr<DevBuf>> single, grouped;
        std::vector<cuda::Gemv4Target> ts;
        cuda::Launch l;
        for (int i = 0; i < 3; ++i) {
          single.push_back(std::make_unique<DevBuf>(poison(M * Ns[i])));
          grouped.push_back(std::make_unique<DevBuf>(poison(M * Ns[i])));
          ASSERT_TRUE(cuda::gemv_lut_4bit_ok(M, s.K, ws[size_t(i)]->q, ct, dx.as<float>()));
          cuda::gemv_lut_4bit(l, dx.as<float>(), M, s.K, ws[size_t(i)]->q, Ns[i], with_bias ? ws[size_t(i)]->db->p : nullptr,
                              2, ct, single.back()->as<float>());
          ts.push_back({&ws[size_t(i)]->q, Ns[i], with_bias ? ws[size_t(i)]->db->p : nullptr, 2, grouped.back()->as<float>()});
        }
        ASSERT_TRUE(cuda::gemv_lut_4bit_group_ok(M, s.K, ts, ct, dx.as<float>()));
        cuda::gemv_lut_4bit_group(l, dx.as<float>(), M, s.K, ts, ct);
        // gated: weights 1 and 2 share N
        DevBuf dgated(poison(M * s.N1));
        for (auto act : {cuda::Act::SiLU, cuda::Act::GeluTanh}) {
          cuda::gemv_lut_4bit_gated(l, dx.as<float>(), M, s.K, ts[1], ts[2], act, ct, dgated.as<float>());
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          const auto gs = download(*single[1], size_t(M * s.N1)), us = download(*single[2], size_t(M * s.N1));
          const auto got = download(dgated, size_t(M * s.N1));
          double mx = 0;
          for (size_t i = 0; i < got.size(); ++i) {
            const double gv = gs[i], a = act == cuda::Act::SiLU ? gv / (1 + std::exp(-gv))
                                                                : 0.5 * gv * (1 + std::tanh(0.7978845608 * (gv + 0.044715 * gv * gv * gv)));
            mx = std::max(mx, std::fabs(a * us[i]));
          }
          for (size_t i = 0; i < got.size(); ++i) {
            const double gv = gs[i], a = act == cuda::Act::SiLU ? gv / (1 + std::exp(-gv))
                                                                : 0.5 * gv * (1 + std::tanh(0.7978845608 * (gv + 0.044715 * gv * gv * gv)));
            // gate and up may each differ by one rounding: act'(g) <= 1.1, so ~3 eps relative
            const double tol = 3.5 * eps_of(ct) * (std::fabs(a) + std::fabs(gv)) * (std::fabs(us[i]) + eps_of(ct)) + 1e-5 * mx;
            ASSERT_LE(std::fabs(got[i] - a * us[i]), tol) << "gated element " << i << " M " << M << " K " << s.K;
          }
        }
        for (int i = 0; i < 3; ++i) {
          const auto a = download(*single[size_t(i)], size_t(M * Ns[i])), b = download(*grouped[size_t(i)], size_t(M * Ns[i]));
          double mx = 0;
          for (float v : a) mx = std::max(mx, double(std::fabs(v)));
          for (size_t j = 0; j < a.size(); ++j)
            ASSERT_LE(std::fabs(double(a[j]) - b[j]), 2 * eps_of(ct) * std::fabs(a[j]) + 1e-6 * mx)
                << "grouped weight " << i << " element " << j << " M " << M << " K " << s.K;
        }
        ++cases;
      }
  EXPECT_EQ(cases, 4 * 5 * 2);
}

// The prefill forms through the ops (M > 16: x rounded once for a q/k/v group, a cuBLAS GEMM a
// weight; the gated form's two epilogues and activation in one pass over the GEMMs' f32 sums)
// against one ops::linear_4bit call a weight and ops::gated_activation on the same device:
// the same formula, so an output may differ only if cuBLAS picks another kernel for it (2
// roundings of the compute dtype). Outputs are poisoned first; the gated call gets its own
// gate/up scratch, which it may overwrite.
TEST(LinearCuda, FourBitPrefillGroupedAndGatedMatchSingleCalls) {
  SKIP_WITHOUT_CUDA();
  const Device gpu = Device::cuda(0);
  ExecContext& ctx = ExecContext::current(gpu);
  std::mt19937_64 rng(fresh_seed());
  const Tensor none;
  auto poisoned = [&](int64_t M, int64_t N) {
    return Tensor::from_vector({M, N}, DType::F32, poison(M * N)).to(gpu);
  };
  auto host = [](const Tensor& t) {
    const Tensor h = t.to(Device::cpu());
    return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
  };
  auto expect_near = [](const std::vector<float>& a, const std::vector<float>& b, DType ct, const char* what) {
    double mx = 0;
    for (float v : a) mx = std::max(mx, double(std::fabs(v)));
    ASSERT_GT(mx, 0.0) << what;
    for (size_t j = 0; j < a.size(); ++j)
      ASSERT_LE(std::fabs(double(a[j]) - b[j]), 2 * eps_of(ct) * std::fabs(a[j]) + 1e-6 * mx)
          << what << " element " << j;
  };
  int cases = 0;
  for (int64_t M : {17, 40, 300})
    for (DType ct : {DType::BF16, DType::F16, DType::F32})
      for (int nested = 0; nested < 2; ++nested) {
        const int64_t K = 256 + 96 * (cases % 3), N0 = 96, N1 = 40;
        const bool with_bias = cases % 2 == 1;
        const DType qt = cases % 4 < 2 ? DType::NF4 : DType::FP4;
        SCOPED_TRACE(testing::Message() << "M=" << M << " K=" << K << " ct=" << dtype_name(ct) << " nested="
                                        << nested << " bias=" << with_bias << " " << dtype_name(qt));
        std::vector<Quantized4> qs;
        std::vector<Tensor> bias, single, grouped;
        const int64_t Ns[3] = {N0, N1, N1};
        for (int64_t N : Ns) {
          qs.push_back(quantize_4bit(test::random_normal({N, K}, DType::BF16, rng, 0.1f).to(gpu), qt, 64, nested));
          bias.push_back(with_bias ? test::random_normal({N}, DType::BF16, rng).to(gpu) : Tensor());
          single.push_back(poisoned(M, N));
          grouped.push_back(poisoned(M, N));
        }
        const Tensor x = test::random_normal({M, K}, DType::F32, rng).to(gpu);
        std::vector<ops::Linear4Ref> refs;
        for (int i = 0; i < 3; ++i) {
          ops::linear_4bit(ctx, x, qs[size_t(i)].packed, qs[size_t(i)].state, none, bias[size_t(i)], ct,
                           single[size_t(i)]);
          refs.push_back({qs[size_t(i)].packed, qs[size_t(i)].state, none, bias[size_t(i)], grouped[size_t(i)]});
        }
        ops::linear_4bit_group(ctx, x, refs, ct);
        for (int i = 0; i < 3; ++i) expect_near(host(single[size_t(i)]), host(grouped[size_t(i)]), ct, "grouped");
        for (auto act : {ops::Activation::SiLU, ops::Activation::GeluTanh}) {
          const Tensor g_out = poisoned(M, N1), u_out = poisoned(M, N1), out = poisoned(M, N1), ref = poisoned(M, N1);
          const ops::Linear4Ref gate{qs[1].packed, qs[1].state, none, bias[1], g_out},
              up{qs[2].packed, qs[2].state, none, bias[2], u_out};
          ops::linear_4bit_gated(ctx, x, gate, up, act, ct, out);
          ops::gated_activation(ctx, single[1], single[2], act, ref);
          expect_near(host(ref), host(out), ct, "gated");
        }
        ++cases;
      }
  EXPECT_EQ(cases, 3 * 3 * 2);
}

// The decode GEMV with its input given as rms_norm(h + r) (the norm computed while x is staged)
// against the unfused kernels: add_rms_norm in place, then the same grouped / gated launch on
// its output. h + r is written bit for bit; the outputs differ only where the norm's f32
// reduction order moves an x element across a rounding of the compute dtype.
TEST(LinearCuda, FourBitWithRmsNormInputMatchesNormThenGemv) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 g(fresh_seed());
  struct Shape {
    int64_t K, N0, N1, bs;
  };
  const Shape shapes[] = {{4096, 300, 40, 64}, {1536, 77, 33, 128}, {11008, 40, 17, 64}, {256, 5, 200, 64}};
  int cases = 0;
  for (const Shape s : shapes)
    for (int64_t M : {1, 2, 3, 9})  // 9: the two-tile kernels
      for (int nested = 0; nested < 2; ++nested) {
        if (!cuda::gemv_lut_4bit_rms_ok(M, s.K)) continue;
        const DType ct = cases % 2 ? DType::F16 : DType::BF16;
        const DType qt = cases % 3 ? DType::NF4 : DType::FP4;
        const DType wdt = cases % 4 < 2 ? DType::BF16 : DType::F32;  // the norm weight
        const bool unit = cases % 5 == 3;                            // Gemma's 1 + w
        const std::vector<float> code2(dynamic_map_signed().begin(), dynamic_map_signed().end());
        DevBuf dc2(code2);
        std::vector<std::unique_ptr<DevQ4>> ws;
        for (int64_t N : {s.N0, s.N1, s.N1}) {
          ws.push_back(
              std::make_unique<DevQ4>(g, N, s.K, s.bs, qt, nested, encode(randu(g, N), DType::BF16)));
          if (nested) ws.back()->q.code2 = dc2.as<float>();
        }
        auto h = randu(g, M * s.K, -2.0f, 2.0f), r = randu(g, M * s.K, -0.5f, 0.5f);
        DevBuf dh(h), dr(r), dh_ref(h), dw(encode(randu(g, s.K, 0.5f, 1.5f), wdt)), dx(poison(M * s.K));
        DevBuf dh_out(poison(M * s.K));
        cuda::Launch l;
        cuda::add_rms_norm(l, dh_ref.as<float>(), dr.as<float>(), M, s.K, dw.p, wdt, 1e-5f, unit,
                           dx.as<float>());
        const cuda::Gemv4Rms rms{
            dh.as<float>(),     dr.as<float>(),    dw.p, wdt == DType::BF16 ? 2 : 0, 1e-5f,
            unit ? 1.0f : 0.0f, dh_out.as<float>()};
        const int64_t Ns[3] = {s.N0, s.N1, s.N1};
        std::vector<std::unique_ptr<DevBuf>> ref, got;
        std::vector<cuda::Gemv4Target> tr, tg;
        for (int i = 0; i < 3; ++i) {
          ref.push_back(std::make_unique<DevBuf>(poison(M * Ns[i])));
          got.push_back(std::make_unique<DevBuf>(poison(M * Ns[i])));
          tr.push_back({&ws[size_t(i)]->q, Ns[i], nullptr, 0, ref.back()->as<float>()});
          tg.push_back({&ws[size_t(i)]->q, Ns[i], nullptr, 0, got.back()->as<float>()});
        }
        ASSERT_TRUE(cuda::gemv_lut_4bit_group_ok(M, s.K, tr, ct, dx.as<float>()));
        cuda::gemv_lut_4bit_group(l, dx.as<float>(), M, s.K, tr, ct);
        cuda::gemv_lut_4bit_group(l, nullptr, M, s.K, tg, ct, &rms);
        DevBuf dgr(poison(M * s.N1)), dgg(poison(M * s.N1));
        cuda::gemv_lut_4bit_gated(l, dx.as<float>(), M, s.K, tr[1], tr[2], cuda::Act::SiLU, ct,
                                  dgr.as<float>());
        cuda::gemv_lut_4bit_gated(l, nullptr, M, s.K, tg[1], tg[2], cuda::Act::SiLU, ct, dgg.as<float>(),
                                  &rms);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const auto ho = download(dh_out, size_t(M * s.K)), hr = download(dh_ref, size_t(M * s.K)),
                   hin = download(dh, size_t(M * s.K));
        ASSERT_EQ(std::memcmp(ho.data(), hr.data(), ho.size() * 4), 0) << "h + r, K " << s.K << " M " << M;
        ASSERT_EQ(std::memcmp(hin.data(), h.data(), h.size() * 4), 0) << "h was written";
        auto compare = [&](const DevBuf& a_buf, const DevBuf& b_buf, int64_t n, const char* what) {
          const auto a = download(a_buf, size_t(n)), b = download(b_buf, size_t(n));
          double mx = 0;
          for (float v : a) mx = std::max(mx, double(std::fabs(v)));
          ASSERT_GT(mx, 0.0) << what;
          for (size_t j = 0; j < a.size(); ++j)
            ASSERT_LE(std::fabs(double(a[j]) - b[j]), 2 * eps_of(ct) * std::fabs(a[j]) + 2e-3 * mx)
                << what << " element " << j << " M " << M << " K " << s.K << " nested " << nested;
        };
        for (int i = 0; i < 3; ++i) compare(*ref[size_t(i)], *got[size_t(i)], M * Ns[i], "grouped");
        compare(dgr, dgg, M * s.N1, "gated");
        ++cases;
      }
  EXPECT_GE(cases, 16);
}

// LLM.int8: random int8 weights and row scales, x with a few planted outliers (|x| >= 6 in some
// columns of some rows, so whole columns become outliers), thresholds 6 and 0 (no outliers),
// every activation dtype; the CUDA result equals the CPU backend's up to the f32 summation
// order of the outlier term.
TEST(LinearCuda, Int8MatchesCpu) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 g(fresh_seed());
  struct Shape {
    int64_t K, N;
  };
  const Shape shapes[] = {{64, 40}, {67, 33}, {256, 129}, {1024, 77}};
  const DType acts[] = {DType::F32, DType::F16, DType::BF16};
  int cases = 0, with_outliers = 0;
  for (const Shape s : shapes)
    for (int64_t M : kMs)
      for (float thr : {6.0f, 0.0f}) {
        const DType act = acts[cases % 3];
        const bool with_bias = (cases % 2) == 0;
        auto x = randu(g, M * s.K, -3.0f, 3.0f);
        std::uniform_int_distribution<int64_t> col(0, s.K - 1), row(0, M - 1);
        for (int o = 0; o < 3; ++o)
          x[size_t(row(g) * s.K + col(g))] = (o % 2 ? -1.0f : 1.0f) * (6.0f + float(o));
        std::vector<int8_t> cb(size_t(s.N * s.K));
        std::uniform_int_distribution<int> q(-127, 127);
        for (auto& v : cb) v = int8_t(q(g));
        auto scb = randu(g, s.N, 0.01f, 2.0f);
        auto b = encode(randu(g, s.N), DType::F16);
        std::vector<float> ref(size_t(M * s.N));
        cpu::linear_int8(x.data(), M, s.K, cb.data(), scb.data(), s.N, with_bias ? b.data() : nullptr,
                         DType::F16, thr, act, ref.data());
        DevBuf dx(x), dcb(cb), dscb(scb), db(b);
        DevBuf dout(poison(M * s.N));
        const size_t wsb = cuda::linear_int8_workspace_bytes(M, s.K, s.N);
        DevBuf dws(wsb);
        cuda::Launch l;
        l.workspace = dws.p;
        l.workspace_bytes = wsb;
        cuda::linear_int8(l, dx.as<float>(), M, s.K, dcb.as<int8_t>(), dscb.as<float>(), s.N,
                          with_bias ? db.p : nullptr, DType::F16, thr, act, dout.as<float>());
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        char what[160];
        std::snprintf(what, sizeof what, "linear_int8 M=%lld K=%lld N=%lld thr=%g act=%s bias=%d",
                      (long long)M, (long long)s.K, (long long)s.N, double(thr), dtype_name(act),
                      int(with_bias));
        expect_close(dout, ref, act == DType::F32 ? DType::F16 : act, what);
        with_outliers += thr > 0.0f;
        ++cases;
      }
  EXPECT_EQ(cases, 4 * 8 * 2);
  EXPECT_EQ(with_outliers, 4 * 8);
}

}  // namespace
#endif
