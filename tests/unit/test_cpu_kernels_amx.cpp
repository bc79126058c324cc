// The AMX bf16 GEMM (gemm_amx.cpp) against the double-precision reference on fresh random
// inputs: the kernel called directly on shapes around its tiles, panels and K chunks (into a
// wider output: no write outside the block), the linear ops that dispatch to it (dense bf16
// and 4-bit weights, bias, bf16 rounding), and the bf16 subnormals TDPBF16PS would read as
// zero (W rows with one go to another kernel, x with one never reaches it). Skips where the
// OS does not grant AMX tiles.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/isa.h"
#include "backends/cpu/linear_cpu.h"
#include "cpu_isa_mode.h"
#include "nibble/quant.h"
#include "ops/nn_ops.h"
#include "ops/nn_ref.h"
#include "test_support.h"

using namespace nibble;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

#define SKIP_WITHOUT_AMX() \
  if (cpu::detected_isa() < cpu::Isa::Amx) GTEST_SKIP() << "AMX tiles not granted here"

Tensor random_bf16_values(const Shape& s, std::mt19937_64& rng, float scale = 1.0f) {
  Tensor x = test::random_normal(s, DType::F32, rng, scale);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = bf16_to_f32(f32_to_bf16(p[i]));
  return x;
}

// |y - ref| within the f32 summation error of K terms (relative to sum |x w|), plus one
// rounding to round_to.
void expect_close(const float* y, int64_t ldo, int64_t M, int64_t N, const Tensor& ref, const Tensor& mag,
                  int64_t K, DType round_to, double abs_floor = 1e-30) {
  const double gamma = (double(K) + 8) * std::ldexp(1.0, -24);
  const double unit = round_to == DType::BF16 ? std::ldexp(1.0, -8) : 0.0;
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N && bad < 5; ++n) {
      const double r = ref.data<double>()[m * N + n], g = mag.data<double>()[m * N + n];
      const double got = y[size_t(m * ldo + n)];
      const double tol = gamma * g + unit * (std::fabs(r) + gamma * g) + abs_floor;
      if (!(std::fabs(got - r) <= tol)) {
        ADD_FAILURE() << "(" << m << ", " << n << "): got " << got << ", reference " << r << " (tolerance "
                      << tol << ")";
        ++bad;
      }
    }
}

}  // namespace

TEST(CpuKernelsAmx, GemmRowsMatchesReferenceOnTileEdges) {
  SKIP_WITHOUT_AMX();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  int runs = 0;
  // M: one block of 16 (4 x 1 tiles), pairs (2 x 2), pairs and a last block; K: 2112 is two
  // chunks; pack order (K % 64 == 0): W and x both in the 4-bit decoder's order
  for (int64_t M : {1, 16, 24, 31, 33, 64, 97})
    for (int64_t K : {32, 96, 576, 2112})
      for (int64_t nr : {1, 15, 33, 128, 161})
        for (bool pack_order : {false, true}) {
          if (pack_order && K % 64 != 0) continue;
          const int64_t r0 = int64_t(rng() % 3), N = r0 + nr + int64_t(rng() % 2), ldo = nr + 5;
          SCOPED_TRACE(testing::Message() << "M=" << M << " K=" << K << " rows " << r0 << "+" << nr
                                          << " pack order " << pack_order);
          Tensor x = random_bf16_values({M, K}, rng);
          Tensor w = test::random_normal({N, K}, DType::BF16, rng, 0.2f);
          std::vector<uint32_t> xp(cpu::amx::packed_x_words(M, K));
          cpu::amx::pack_x(x.data<float>(), M, K, 0, (M + 15) / 16, xp.data(), pack_order);
          const uint16_t* wh = w.data<uint16_t>();
          const auto element = [&](int64_t p) {  // the element at position p of a row
            if (!pack_order) return p;
            const int64_t c = p / 64 * 64, q = p % 64;
            return c + (q < 32 ? 2 * q : 2 * (q - 32) + 1);
          };
          const cpu::amx::WChunkFn rows = [&](int64_t a, int64_t n, int64_t k0, int64_t kc, uint16_t* dst,
                                              int64_t ld) {
            ASSERT_GE(a, r0);
            ASSERT_LE(a + n, r0 + nr);
            for (int64_t r = 0; r < n; ++r)
              for (int64_t k = 0; k < kc; ++k) dst[r * ld + k] = wh[(a + r) * K + element(k0 + k)];
          };
          std::vector<float> out(size_t(M * ldo), kNaN);
          ASSERT_TRUE(cpu::amx::gemm_rows(xp.data(), M, K, rows, r0, nr, out.data(), ldo));
          Tensor mag;
          Tensor ref = ops::ref::linear(x, w.slice(0, r0, r0 + nr).contiguous(), Tensor(), DType::F32, &mag);
          expect_close(out.data(), ldo, M, nr, ref, mag, K, DType::F32);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = nr; n < ldo; ++n)
              ASSERT_TRUE(std::isnan(out[size_t(m * ldo + n)]))
                  << "wrote past the block at " << m << "," << n;
          ++runs;
        }
  EXPECT_EQ(runs, 7 * (4 + 2) * 5);
}

TEST(CpuKernelsAmx, LinearOpsTakeItAndMatchReference) {
  SKIP_WITHOUT_AMX();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  test::IsaMode mode(cpu::Isa::Amx);
  for (int64_t M : {8, 13, 24, 130})  // from kAmxRows (8) up
    for (int64_t N : {33, 200})
      for (int64_t K : {64, 576}) {
        SCOPED_TRACE(testing::Message() << "M=" << M << " N=" << N << " K=" << K);
        Tensor x = test::random_normal({M, K}, DType::F32, rng);
        Tensor b = test::random_normal({N}, DType::BF16, rng);
        {  // dense bf16 weights, bf16 rounding
          Tensor w = test::random_normal({N, K}, DType::BF16, rng, 0.2f);
          Tensor mag;
          Tensor ref = ops::ref::linear(x, w, b, DType::BF16, &mag);
          std::vector<float> out(size_t(M * N), kNaN);
          cpu::linear(x.data<float>(), M, K, w.data_ptr(), DType::BF16, N, b.data_ptr(), DType::BF16,
                      DType::BF16, out.data());
          expect_close(out.data(), N, M, N, ref, mag, K, DType::BF16);
        }
        for (DType qt : {DType::NF4, DType::FP4})
          for (bool dq : {false, true}) {  // 4-bit weights, bf16 compute
            SCOPED_TRACE(testing::Message() << dtype_name(qt) << " dq=" << dq);
            Tensor w = test::random_normal({N, K}, DType::BF16, rng, 0.1f);
            Quantized4 q = quantize_4bit(w, qt, 64, dq);
            Tensor mag;
            Tensor ref = ops::ref::linear_4bit(x, q.packed, q.state, b, DType::BF16, &mag);
            Tensor y = ops::linear_4bit(x, q.packed, q.state, b, DType::BF16);
            expect_close(y.data<float>(), N, M, N, ref, mag, K, DType::BF16);
          }
      }
}

TEST(CpuKernelsAmx, BF16SubnormalsNeverReadAsZero) {
  // Rows of W whose values are bf16 subnormals (~1e-39) times x of ~1e3: the exact sums are
  // ~1e-36, normal numbers, which a kernel reading the subnormals as zero would return as 0.
  SKIP_WITHOUT_AMX();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t M = 40, N = 70, K = 128;
  Tensor x = random_bf16_values({M, K}, rng, 1000.0f);
  Tensor w = test::random_normal({N, K}, DType::F32, rng, 0.2f);
  for (int64_t r : {3, 50})
    for (int64_t k = 0; k < K; ++k) w.data<float>()[r * K + k] *= 1e-38f;
  Tensor wb = w.to(DType::BF16);
  Tensor mag;
  Tensor ref = ops::ref::linear(x, wb, Tensor(), DType::F32, &mag);
  ASSERT_NE(ref.data<double>()[3], 0.0);
  // the kernel itself reports the rows it cannot compute
  std::vector<uint32_t> xp(cpu::amx::packed_x_words(M, K));
  cpu::amx::pack_x(x.data<float>(), M, K, 0, (M + 15) / 16, xp.data());
  const uint16_t* wh = wb.data<uint16_t>();
  const cpu::amx::WChunkFn rows = [&](int64_t a, int64_t n, int64_t k0, int64_t kc, uint16_t* dst,
                                      int64_t ld) {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t k = 0; k < kc; ++k) dst[r * ld + k] = wh[(a + r) * K + k0 + k];
  };
  std::vector<float> out(size_t(M * N), kNaN);
  EXPECT_FALSE(cpu::amx::gemm_rows(xp.data(), M, K, rows, 0, N, out.data(), N));
  EXPECT_TRUE(cpu::amx::gemm_rows(xp.data(), M, K, rows, 4, 40, out.data() + 4, N));
  // the linear op computes those rows another way (no absolute floor: the sums are ~1e-36)
  test::IsaMode mode(cpu::Isa::Amx);
  std::fill(out.begin(), out.end(), kNaN);
  cpu::linear(x.data<float>(), M, K, wb.data_ptr(), DType::BF16, N, nullptr, DType::F32, DType::BF16,
              out.data());
  Tensor ref_bf16 = ops::ref::linear(x, wb, Tensor(), DType::BF16, &mag);
  expect_close(out.data(), N, M, N, ref_bf16, mag, K, DType::BF16, 0.0);
  // x with bf16 subnormals (row 9, positive, times positive weights: sums ~1e-37): the op
  // leaves the AMX kernel
  Tensor w2 = test::random_normal({N, K}, DType::F32, rng, 0.2f);
  for (int64_t i = 0; i < N * K; ++i) w2.data<float>()[i] = std::fabs(w2.data<float>()[i]) + 0.01f;
  w2 = w2.to(DType::BF16);
  for (int64_t k = 0; k < K; ++k) x.data<float>()[9 * K + k] = 1e-38f * float(1 + k % 3) / 3.0f;
  ref_bf16 = ops::ref::linear(x, w2, Tensor(), DType::BF16, &mag);
  cpu::linear(x.data<float>(), M, K, w2.data_ptr(), DType::BF16, N, nullptr, DType::F32, DType::BF16,
              out.data());
  expect_close(out.data(), N, M, N, ref_bf16, mag, K, DType::BF16, 0.0);
}
