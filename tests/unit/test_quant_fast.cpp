// The fast CPU quantization paths (AVX2, AVX-512, threads) against the scalar reference on fresh
// random inputs, at every SIMD level of the machine: every blocksize, dtype and quant type, odd and partial
// sizes, zero blocks, NaN/inf values. Also the accuracy yardsticks of bitsandbytes' own tests.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "backends/cpu/quant_cpu.h"
#include "cpu_isa_mode.h"
#include "nibble/quant.h"
#include "nibble/thread_pool.h"
#include "quant/reference.h"
#include "test_support.h"

using namespace nibble;

namespace {

Tensor awkward_input(int64_t n, DType dt, std::mt19937_64& rng, int kind) {
  Tensor x = test::random_normal({n}, dt, rng, 0.05f);
  std::uniform_int_distribution<int64_t> pos(0, std::max<int64_t>(n - 1, 0));
  if (kind == 1 && n > 100)  // a zero run covering whole blocks
    for (int64_t i = 0; i < std::min<int64_t>(n, 300); ++i) store_from_f32(x.data_ptr(), dt, i, 0.0f);
  if (kind == 2)  // outliers, signed zeros and specials
    for (int k = 0; k < 8; ++k) {
      float v[] = {20.0f, -0.0f, 0.0f, INFINITY, -INFINITY, NAN, 1e-30f, -7.0f};
      store_from_f32(x.data_ptr(), dt, pos(rng), v[k]);
    }
  return x;
}

}  // namespace

TEST(QuantFast, FourBitMatchesReference) {
  uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (DType qt : {DType::NF4, DType::FP4})
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (int64_t bs = 32; bs <= 4096; bs *= 2)
        for (int kind = 0; kind < 3; ++kind) {
          int64_t n = std::uniform_int_distribution<int64_t>(1, 20000)(rng);
          if (kind == 0) n = n / bs * bs + (n % 2);  // mostly full blocks, sometimes one odd tail
          if (n == 0) n = bs;
          SCOPED_TRACE(testing::Message() << dtype_name(qt) << " " << dtype_name(dt) << " bs=" << bs
                                          << " n=" << n << " kind=" << kind);
          Tensor x = awkward_input(n, dt, rng, kind);
          int64_t nb = (n + bs - 1) / bs;
          std::vector<uint8_t> p_ref(size_t((n + 1) / 2), 0xAA);
          std::vector<float> a_ref(size_t(nb), -1);
          quant::ref::quantize_4bit(x.data_ptr(), dt, n, bs, qt, p_ref.data(), a_ref.data());
          for (cpu::Isa isa : test::cpu_isas()) {
            test::IsaMode mode(isa);
            std::vector<uint8_t> p_fast(size_t((n + 1) / 2), 0x55);
            std::vector<float> a_fast(size_t(nb), -2);
            cpu::quantize_4bit(x.data_ptr(), dt, n, bs, qt, p_fast.data(), a_fast.data());
            ASSERT_EQ(p_ref, p_fast) << cpu::isa_name(isa);
            ASSERT_EQ(0, std::memcmp(a_ref.data(), a_fast.data(), a_ref.size() * 4)) << cpu::isa_name(isa);
          }
          for (DType out_dt : {DType::F32, DType::F16, DType::BF16}) {
            Tensor o_ref = Tensor::empty({n}, out_dt), o_fast = Tensor::empty({n}, out_dt);
            std::memset(o_fast.data_ptr(), 0x7f, o_fast.nbytes());
            quant::ref::dequantize_4bit(p_ref.data(), a_ref.data(), n, bs, qt, o_ref.data_ptr(), out_dt);
            cpu::dequantize_4bit(p_ref.data(), a_ref.data(), n, bs, qt, o_fast.data_ptr(), out_dt);
            ASSERT_EQ(0, std::memcmp(o_ref.data_ptr(), o_fast.data_ptr(), o_ref.nbytes()))
                << dtype_name(out_dt);
          }
        }
}

TEST(QuantFast, ThreadCountDoesNotChangeBytes) {
  std::mt19937_64 rng(test::fresh_seed());
  Tensor x = test::random_normal({257, 1001}, DType::BF16, rng);
  int before = num_threads();
  set_num_threads(1);
  auto one = quantize_4bit(x, DType::NF4, 64, true);
  set_num_threads(4);
  auto four = quantize_4bit(x, DType::NF4, 64, true);
  set_num_threads(before);
  ASSERT_EQ(0, std::memcmp(one.packed.data_ptr(), four.packed.data_ptr(), one.packed.nbytes()));
  ASSERT_EQ(
      0, std::memcmp(one.state.absmax.data_ptr(), four.state.absmax.data_ptr(), one.state.absmax.nbytes()));
  EXPECT_EQ(one.state.offset, four.state.offset);
}

TEST(QuantFast, Blockwise8AndInt8MatchReference) {
  std::mt19937_64 rng(test::fresh_seed());
  for (int64_t bs : {64, 256, 2048, 4096}) {
    Tensor x = awkward_input(12345, DType::F32, rng, 2);
    int64_t n = x.numel(), nb = (n + bs - 1) / bs;
    std::vector<uint8_t> q1(static_cast<size_t>(n)), q2(static_cast<size_t>(n));
    std::vector<float> a1(static_cast<size_t>(nb)), a2(static_cast<size_t>(nb));
    quant::ref::quantize_blockwise8(x.data_ptr(), DType::F32, n, bs, dynamic_map_signed().data(), q1.data(),
                                    a1.data());
    cpu::quantize_blockwise8(x.data_ptr(), DType::F32, n, bs, dynamic_map_signed().data(), q2.data(),
                             a2.data());
    ASSERT_EQ(q1, q2);
    ASSERT_EQ(0, std::memcmp(a1.data(), a2.data(), a1.size() * 4));
  }
  Tensor a = test::random_normal({37, 515}, DType::F16, rng, 2.0f);
  std::vector<int8_t> c1(37 * 515), c2(37 * 515);
  std::vector<float> s1(37), s2(37);
  quant::ref::int8_vectorwise_quant(a.data<uint16_t>(), 37, 515, 0.0f, c1.data(), s1.data(), nullptr);
  cpu::int8_vectorwise_quant(a.data<uint16_t>(), 37, 515, 0.0f, c2.data(), s2.data(), nullptr);
  EXPECT_EQ(c1, c2);
  EXPECT_EQ(s1, s2);
}

// bitsandbytes' yardsticks (FORMATS.md §6): randn 1024x1024, blocksize 64.
TEST(QuantFast, AccuracyYardsticks) {
  std::mt19937_64 rng(test::fresh_seed());
  Tensor x = test::random_normal({1024, 1024}, DType::F32, rng);
  struct Case {
    DType qt;
    bool dq;
    double abs_max, rel_max;
  };
  for (Case c : {Case{DType::NF4, false, 0.0728 * 1.02, 0.2033 * 1.02},
                 Case{DType::FP4, false, 0.0965 * 1.02, 0.2601 * 1.02}, Case{DType::NF4, true, 0.11, 0.28},
                 Case{DType::FP4, true, 0.11, 0.28}}) {
    auto q = quantize_4bit(x, c.qt, 64, c.dq);
    Tensor d = dequantize_4bit(q.packed, q.state);
    double abs_err = 0, rel_err = 0;
    const float* a = x.data<float>();
    const float* b = d.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double e = std::fabs(double(a[i]) - b[i]);
      abs_err += e;
      rel_err += e / (std::fabs(double(a[i])) + 1e-8);
    }
    abs_err /= double(x.numel());
    rel_err /= double(x.numel());
    EXPECT_LT(abs_err, c.abs_max) << dtype_name(c.qt) << " dq=" << c.dq;
    EXPECT_LT(rel_err, c.rel_max) << dtype_name(c.qt) << " dq=" << c.dq;
    EXPECT_GT(abs_err, 0.01);  // 4 bits cannot be near-lossless: guards against comparing x with itself
  }
  auto q8 = quantize_blockwise8(x, 256);
  Tensor d8 = dequantize_blockwise8(q8);
  double abs_err = 0;
  for (int64_t i = 0; i < x.numel(); ++i)
    abs_err += std::fabs(double(x.data<float>()[i]) - d8.data<float>()[i]);
  EXPECT_LT(abs_err / double(x.numel()), 0.011);
}

TEST(QuantOps, RejectsBadArguments) {
  Tensor x = Tensor::zeros({64}, DType::F32);
  EXPECT_THROW(quantize_4bit(x, DType::NF4, 48), ConfigError);
  EXPECT_THROW(quantize_4bit(x, DType::NF4, 8192), ConfigError);
  EXPECT_THROW(quantize_4bit(x, DType::F16, 64), ConfigError);
  EXPECT_THROW(quantize_4bit(Tensor::zeros({64}, DType::I32), DType::NF4, 64), ShapeError);
  EXPECT_THROW(int8_vectorwise_quant(x), ShapeError);
  auto q = quantize_4bit(x, DType::NF4, 64);
  EXPECT_THROW(dequantize_4bit(Tensor::zeros({31, 1}, DType::U8), q.state), ShapeError);
}
