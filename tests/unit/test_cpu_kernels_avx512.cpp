// The AVX-512 kernels that the dispatch in linear_cpu.cpp does not always reach, called
// directly on fresh random inputs and odd shapes: the bf16 GEMM (vdpbf16ps; not dispatched,
// slower than FMAs on the machine it was measured on) and the fp32 one, the bf16 GEMV with
// subnormal weights (its fp32 fallback), and LLM.int8 bit for bit equal at every ISA level, AMX
// included (its int8 products and f16 epilogue are exact, so every level must give the same bits) and
// its activation quantization equal to the reference.
// Each skips where the CPU lacks the level.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backends/cpu/isa.h"
#include "backends/cpu/linear_cpu.h"
#include "backends/cpu/quant_cpu.h"
#include "cpu_isa_mode.h"
#include "nibble/quant.h"
#include "ops/nn_ops.h"
#include "ops/nn_ref.h"
#include "quant/reference.h"
#include "test_support.h"

using namespace nibble;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// x values rounded to bf16 (as the linear ops round x before these kernels).
Tensor random_bf16_values(const Shape& s, std::mt19937_64& rng) {
  Tensor x = test::random_normal(s, DType::F32, rng);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = bf16_to_f32(f32_to_bf16(p[i]));
  return x;
}

// |y - ref| within the f32 summation error of K terms (relative to sum |x w|).
void expect_sums_close(const std::vector<float>& y, int64_t ldo, int64_t M, int64_t N, const Tensor& ref,
                       const Tensor& mag, int64_t K) {
  const double gamma = (double(K) + 8) * std::ldexp(1.0, -24);
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N && bad < 5; ++n) {
      const double r = ref.data<double>()[m * N + n], g = mag.data<double>()[m * N + n];
      const double got = y[size_t(m * ldo + n)];
      if (!(std::fabs(got - r) <= gamma * g + 1e-30)) {
        ADD_FAILURE() << "(" << m << ", " << n << "): got " << got << ", reference " << r;
        ++bad;
      }
    }
}

}  // namespace

TEST(CpuKernelsAvx512, GemmPackedBf16AndF32MatchReference) {
  if (cpu::detected_isa() < cpu::Isa::Avx512) GTEST_SKIP() << "no AVX-512";
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const bool has_bf16 = cpu::detected_isa() >= cpu::Isa::Avx512Bf16;
  struct S {
    int64_t M, N, K;
  };
  for (S s : {S{24, 5, 1}, S{25, 33, 31}, S{29, 64, 256}, S{13, 300, 257}, S{37, 17, 513}, S{2, 48, 96}})
    for (DType wdt : {DType::BF16, DType::F16, DType::F32})
      for (bool bf16 : {false, true}) {
        if (bf16 && (!has_bf16 || wdt != DType::BF16)) continue;
        for (bool subnormal : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "M=" << s.M << " N=" << s.N << " K=" << s.K << " w=" << dtype_name(wdt)
                       << " bf16=" << bf16 << " subnormal=" << subnormal);
          Tensor x = random_bf16_values({s.M, s.K}, rng);
          Tensor w = test::random_normal({s.N, s.K}, wdt, rng, 0.1f);
          if (subnormal && wdt == DType::BF16)  // a bf16 subnormal weight: that panel goes to the FMA kernel
            w.data<uint16_t>()[(rng() % uint64_t(s.N)) * s.K + rng() % uint64_t(s.K)] = 0x0005;
          const int64_t ldo = s.N + 3;
          std::vector<float> out(size_t(s.M * ldo), kNaN);
          cpu::avx512::gemm_packed(x.data<float>(), s.M, s.K, w.data_ptr(), wdt, s.N, out.data(), ldo, bf16);
          Tensor mag;
          Tensor ref = ops::ref::linear(x, w, Tensor(), DType::F32, &mag);
          expect_sums_close(out, ldo, s.M, s.N, ref, mag, s.K);
          for (int64_t m = 0; m < s.M; ++m)
            for (int64_t n = s.N; n < ldo; ++n)
              EXPECT_TRUE(std::isnan(out[size_t(m * ldo + n)])) << "wrote past N";
        }
      }
}

TEST(CpuKernelsAvx512, GemvBf16MatchesReferenceWithSubnormalWeights) {
  if (cpu::detected_isa() < cpu::Isa::Avx512Bf16) GTEST_SKIP() << "no AVX512_BF16";
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t M : {1, 2, 3, 4})
    for (int64_t K : {1, 31, 32, 64, 100, 2048})
      for (int64_t N : {1, 7, 8, 9, 37})
        for (bool subnormal : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "M=" << M << " N=" << N << " K=" << K << " subnormal=" << subnormal);
          Tensor x = random_bf16_values({M, K}, rng);
          Tensor w = test::random_normal({N, K}, DType::BF16, rng, 0.1f);
          if (subnormal) w.data<uint16_t>()[(rng() % uint64_t(N)) * K + rng() % uint64_t(K)] = 0x8003;
          const int64_t ldo = N + 2;
          std::vector<float> out(size_t(M * ldo), kNaN);
          cpu::avx512::gemv_bf16(x.data<float>(), M, K, w.data<uint16_t>(), N, out.data(), ldo);
          Tensor mag;
          Tensor ref = ops::ref::linear(x, w, Tensor(), DType::F32, &mag);
          expect_sums_close(out, ldo, M, N, ref, mag, K);
          if (subnormal) {
            // the subnormal's product must count exactly as in the reference (x * tiny is
            // far below the sum; check the row via a sum that is the product alone)
            Tensor x1 = Tensor::zeros({1, K}, DType::F32);
            Tensor w1 = Tensor::zeros({1, K}, DType::BF16);
            x1.data<float>()[0] = 1.0f;
            w1.data<uint16_t>()[0] = 0x0003;
            float o = kNaN;
            cpu::avx512::gemv_bf16(x1.data<float>(), 1, K, w1.data<uint16_t>(), 1, &o, 1);
            EXPECT_EQ(o, bf16_to_f32(0x0003));
          }
        }
}

TEST(CpuKernelsAvx512, Int8SameBitsAtEveryIsaLevel) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  struct S {
    int64_t M, N, K;
  };
  // the last four take the AMX kernel where granted (M >= 8, K % 64 == 0; 4160: three chunks of K;
  // 16: one block of x rows, 4 x 1 tiles)
  for (S s : {S{1, 70, 64}, S{1, 9, 33}, S{2, 65, 127}, S{4, 33, 200}, S{5, 67, 65}, S{13, 130, 300},
              S{30, 7, 1}, S{16, 33, 192}, S{30, 70, 128}, S{67, 100, 640}, S{40, 130, 4160}})
    for (DType act : {DType::F16, DType::BF16, DType::F32})
      for (int bias_kind = 0; bias_kind < 3; ++bias_kind) {
        SCOPED_TRACE(testing::Message() << "M=" << s.M << " N=" << s.N << " K=" << s.K
                                        << " act=" << dtype_name(act) << " bias=" << bias_kind);
        Tensor w = test::random_normal({s.N, s.K}, DType::F16, rng, 0.05f);
        Int8Rowwise wq = int8_vectorwise_quant(w, 0.0f);
        Tensor x = test::random_normal({s.M, s.K}, DType::F32, rng);
        Tensor b = bias_kind == 0 ? Tensor()
                                  : test::random_normal({s.N}, bias_kind == 1 ? DType::F16 : DType::F32, rng);
        std::vector<std::vector<float>> outs;
        for (cpu::Isa isa : test::cpu_isas()) {
          test::IsaMode mode(isa);
          std::vector<float> out(size_t(s.M * s.N), kNaN);
          cpu::linear_int8(x.data<float>(), s.M, s.K, wq.CA.data<int8_t>(), wq.SCA.data<float>(), s.N,
                           b.defined() ? b.data_ptr() : nullptr, b.defined() ? b.dtype() : DType::F32, 6.0f,
                           act, out.data());
          outs.push_back(out);
        }
        Tensor ref = ops::ref::linear_int8(x, wq.CA, wq.SCA, b, 6.0f, act);
        for (size_t i = 0; i < outs.size(); ++i) {
          SCOPED_TRACE(cpu::isa_name(test::cpu_isas()[i]));
          EXPECT_EQ(0, std::memcmp(outs[i].data(), outs[0].data(), outs[0].size() * 4));
          for (int64_t j = 0; j < s.M * s.N; ++j) ASSERT_EQ(outs[i][size_t(j)], ref.data<float>()[j]) << j;
        }
      }
}

TEST(CpuKernelsAvx512, Int8ActivationQuantMatchesReferenceAtEveryIsaLevel) {
  // LLM.int8's row-wise activation quantization: same bytes, scales and outlier columns as the
  // reference, with outliers (|x| >= 6), NaN, infinities, an all-zero row, one row and many,
  // widths off the 16-lane step.
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t rows : {1, 2, 7, 40})
    for (int64_t cols : {1, 15, 16, 17, 100, 515})
      for (float threshold : {0.0f, 6.0f}) {
        SCOPED_TRACE(testing::Message() << "rows=" << rows << " cols=" << cols << " threshold=" << threshold);
        Tensor a = test::random_normal({rows, cols}, DType::F16, rng, 2.0f);
        uint16_t* p = a.data<uint16_t>();
        for (int o = 0; o < 3; ++o)
          p[rng() % uint64_t(rows * cols)] = f32_to_f16((rng() % 2 ? 1 : -1) * 9.5f);
        if (rows * cols > 10) {
          p[rng() % uint64_t(rows * cols)] = 0x7e00;  // NaN
          p[rng() % uint64_t(rows * cols)] = 0xfc00;  // -inf
        }
        if (rows > 2)
          for (int64_t c = 0; c < cols; ++c) p[1 * cols + c] = 0;  // an all-zero row
        std::vector<int8_t> c1(size_t(rows * cols));
        std::vector<float> s1(static_cast<size_t>(rows));
        std::vector<int64_t> o1;
        quant::ref::int8_vectorwise_quant(p, rows, cols, threshold, c1.data(), s1.data(), &o1);
        for (cpu::Isa isa : test::cpu_isas()) {
          SCOPED_TRACE(cpu::isa_name(isa));
          test::IsaMode mode(isa);
          std::vector<int8_t> c2(size_t(rows * cols), 99);
          std::vector<float> s2(static_cast<size_t>(rows), kNaN);
          std::vector<int64_t> o2 = {-1};
          cpu::int8_vectorwise_quant(p, rows, cols, threshold, c2.data(), s2.data(), &o2);
          EXPECT_EQ(c1, c2);
          EXPECT_EQ(0, std::memcmp(s1.data(), s2.data(), s1.size() * 4));
          if (threshold > 0.0f) {
            EXPECT_EQ(o1, o2);
          }
        }
      }
}

TEST(CpuKernelsAvx512, Gemv4bitNestedAbsmaxSameBitsAsF32Absmax) {
  // The decode GEMV reading the double-quantized absmax bytes must give exactly what it gives
  // with dequantize_absmax's f32 values (and both stay close to the reference).
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t M : {1, 2, 3, 4})
    for (int64_t K : {64, 128, 576, 2048})
      for (int64_t N : {1, 9, 40, 300})
        for (DType qt : {DType::NF4, DType::FP4})
          for (DType cdt : {DType::BF16, DType::F32, DType::F16}) {
            const int64_t bs = int64_t(64) << (rng() % 2);
            if (K % bs) continue;
            SCOPED_TRACE(testing::Message() << "M=" << M << " N=" << N << " K=" << K << " bs=" << bs << " "
                                            << dtype_name(qt) << " compute=" << dtype_name(cdt));
            Tensor w = test::random_normal({N, K}, DType::BF16, rng, 0.1f);
            Quantized4 q = quantize_4bit(w, qt, bs, true);
            Tensor absmax = dequantize_absmax(q.state);
            Tensor x = test::random_normal({M, K}, DType::F32, rng);
            cpu::Absmax4 nested{.q = q.state.absmax.data<uint8_t>(),
                                .absmax2 = q.state.nested_absmax.data<float>(),
                                .code = dynamic_map_signed().data(),
                                .offset = q.state.offset};
            for (cpu::Isa isa : test::cpu_isas()) {
              SCOPED_TRACE(cpu::isa_name(isa));
              test::IsaMode mode(isa);
              std::vector<float> a(size_t(M * N), kNaN), b(size_t(M * N), kNaN);
              cpu::linear_4bit(x.data<float>(), M, K, q.packed.data<uint8_t>(), absmax.data<float>(), bs, qt,
                               N, nullptr, DType::F32, cdt, a.data());
              cpu::linear_4bit(x.data<float>(), M, K, q.packed.data<uint8_t>(), absmax.data<float>(), bs, qt,
                               N, nullptr, DType::F32, cdt, b.data(), &nested);
              ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
            }
          }
}
