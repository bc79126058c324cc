// The linear ops (dense, 4-bit, LLM.int8) against the scalar references of ops/nn_ref.h on
// fresh random inputs and awkward shapes (M = 1, odd M, K and N off every SIMD width and
// blocksize), through the public op and through the backend with a NaN-poisoned output
// buffer; every SIMD level's kernels (cpu_isa_mode.h) and the portable ones must agree with the reference
// alike. Also the shape/dtype errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backends/cpu/linear_cpu.h"
#include "backends/cpu/quant_cpu.h"
#include "batched_decode_check.h"
#include "core/exec_context.h"
#include "cpu_isa_mode.h"
#include "nibble/quant.h"
#include "nibble/thread_pool.h"
#include "ops/nn_ops.h"
#include "ops/nn_ref.h"
#include "quant/reference.h"
#include "test_support.h"

using namespace nibble;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Spacing of dt's values around v (the error one output rounding may add).
double ulp(DType dt, double v) {
  const int mant = dt == DType::BF16 ? 7 : dt == DType::F16 ? 10 : 23;
  const int min_exp = dt == DType::F16 ? -14 : -126;
  int e = v == 0.0 ? min_exp : std::max(min_exp, std::ilogb(v));
  return std::ldexp(1.0, e - mant);
}

// y (f32 [M, N]) against the exact ref: the worst-case f32 accumulation error of the kernels'
// summation orders (8 lanes along K in slices of 512, or sequential sums over slices of 256 in
// the packed GEMM), relative to mag = sum |x w|, plus one rounding to round_to.
void expect_close(const float* y, const Tensor& ref, const Tensor& mag, int64_t K, DType round_to,
                  double abs_floor = 1e-30) {
  const double gamma = (double(std::min<int64_t>(K, 256)) + double(K) / 8 + 8) * std::ldexp(1.0, -24);
  const int64_t n = ref.numel();
  int bad = 0;
  for (int64_t i = 0; i < n && bad < 5; ++i) {
    const double r = ref.data<double>()[i], m = mag.data<double>()[i];
    const double tol =
        gamma * m + (round_to == DType::F32 ? 0.0 : ulp(round_to, std::fabs(r) + gamma * m)) + abs_floor;
    if (!(std::fabs(double(y[i]) - r) <= tol)) {
      ADD_FAILURE() << "element " << i << ": got " << y[i] << ", reference " << r << " (tolerance " << tol
                    << ")";
      ++bad;
    }
  }
}

struct Shape3 {
  int64_t M, N, K;
};

// Hand-picked awkward shapes plus a few random ones.
std::vector<Shape3> shapes(std::mt19937_64& rng) {
  std::vector<Shape3> s = {{1, 1, 1},    {1, 9, 7},      {1, 33, 64},  {1, 100, 517},  {2, 17, 65},
                           {3, 5, 63},   {4, 8, 8},      {5, 31, 129}, {7, 40, 1000},  {13, 3, 520},
                           {67, 45, 96}, {1, 256, 1024}, {9, 70, 33},  {30, 150, 600}, {25, 17, 257}};
  std::uniform_int_distribution<int64_t> m(1, 20), n(1, 80), k(1, 700);
  for (int i = 0; i < 4; ++i) s.push_back({m(rng), n(rng), k(rng)});
  return s;
}

using test::cpu_isas;
using test::IsaMode;

// One of this machine's levels at random.
cpu::Isa random_isa(std::mt19937_64& rng) {
  const std::vector<cpu::Isa> v = cpu_isas();
  return v[rng() % v.size()];
}

Tensor random_bias(int64_t N, int kind, std::mt19937_64& rng) {
  if (kind == 0) return Tensor();
  return test::random_normal({N}, kind == 1 ? DType::F32 : DType::BF16, rng);
}

}  // namespace

TEST(NnOpsLinear, MatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (const Shape3& s : shapes(rng))
    for (DType wdt : {DType::F32, DType::F16, DType::BF16})
      for (DType rt : {DType::F32, DType::BF16, DType::F16}) {
        SCOPED_TRACE(testing::Message() << "M=" << s.M << " N=" << s.N << " K=" << s.K
                                        << " w=" << dtype_name(wdt) << " round_to=" << dtype_name(rt));
        Tensor x = test::random_normal({s.M, s.K}, DType::F32, rng);
        Tensor w = test::random_normal({s.N, s.K}, wdt, rng, 0.2f);
        Tensor b = random_bias(s.N, int(rng() % 3), rng);
        Tensor mag;
        Tensor ref = ops::ref::linear(x, w, b, rt, &mag);
        for (cpu::Isa isa : cpu_isas()) {
          SCOPED_TRACE(cpu::isa_name(isa));
          IsaMode mode(isa);
          Tensor y = ops::linear(x, w, b, rt);
          ASSERT_EQ(y.shape(), (Shape{s.M, s.N}));
          expect_close(y.data<float>(), ref, mag, s.K, rt);
          // the backend with a poisoned output: every element must be written
          std::vector<float> out(static_cast<size_t>(s.M * s.N), kNaN);
          cpu::linear(x.data<float>(), s.M, s.K, w.data_ptr(), wdt, s.N, b.defined() ? b.data_ptr() : nullptr,
                      b.defined() ? b.dtype() : DType::F32, rt, out.data());
          expect_close(out.data(), ref, mag, s.K, rt);
        }
      }
}

TEST(NnOpsLinear, BlockKernelEdges) {
  // The blocked kernels on their tile edges (M around the 4- and 6-row blocks and the packed
  // GEMM's threshold, K around the K slices, N not a multiple of the tile width) into a wider
  // output: no write outside the block.
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (cpu::Isa isa : cpu_isas())
    for (int64_t M : {1, 2, 3, 4, 5, 6, 8, 11, 24, 29})
      for (int64_t K : {511, 512, 513, 1031})
        for (DType wdt : {DType::F32, DType::F16, DType::BF16}) {
          IsaMode mode(isa);
          const int64_t N = 37, ldo = N + 3;
          SCOPED_TRACE(testing::Message()
                       << "M=" << M << " K=" << K << " " << dtype_name(wdt) << " isa=" << cpu::isa_name(isa));
          Tensor x = test::random_normal({M, K}, DType::F32, rng);
          Tensor w = test::random_normal({N, K}, wdt, rng);
          std::vector<float> out(static_cast<size_t>(M * ldo), kNaN);
          cpu::gemm_xwt_block(x.data<float>(), M, K, w.data_ptr(), wdt, N, out.data(), ldo);
          Tensor mag;
          Tensor ref = ops::ref::linear(x, w, Tensor(), DType::F32, &mag);
          std::vector<float> packed(static_cast<size_t>(M * N));
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < ldo; ++n) {
              if (n < N)
                packed[size_t(m * N + n)] = out[size_t(m * ldo + n)];
              else
                EXPECT_TRUE(std::isnan(out[size_t(m * ldo + n)]))
                    << "wrote past the block at " << m << "," << n;
            }
          expect_close(packed.data(), ref, mag, K, DType::F32);
        }
}

TEST(NnOpsLinear, ThreadCountDoesNotMatterAndLeadingDims) {
  std::mt19937_64 rng(test::fresh_seed());
  Tensor x = test::random_normal({2, 3, 300}, DType::F32, rng);
  Tensor w = test::random_normal({77, 300}, DType::BF16, rng);
  const int before = num_threads();
  set_num_threads(1);
  Tensor a = ops::linear(x, w, Tensor());
  set_num_threads(3);
  Tensor b = ops::linear(x, w, Tensor());
  set_num_threads(before);
  ASSERT_EQ(a.shape(), (Shape{2, 3, 77}));
  EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()));
}

TEST(NnOpsLinear, EmptyDimensions) {
  std::mt19937_64 rng(test::fresh_seed());
  Tensor b = test::random_normal({5}, DType::F32, rng);
  Tensor y = ops::linear(Tensor::zeros({3, 0}, DType::F32), Tensor::zeros({5, 0}, DType::BF16), b);
  ASSERT_EQ(y.shape(), (Shape{3, 5}));
  for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(y.data<float>()[i], b.data<float>()[i % 5]);
  EXPECT_EQ(
      ops::linear(Tensor::zeros({0, 4}, DType::F32), Tensor::zeros({5, 4}, DType::F32), Tensor()).shape(),
      (Shape{0, 5}));
  EXPECT_EQ(
      ops::linear(Tensor::zeros({2, 4}, DType::F32), Tensor::zeros({0, 4}, DType::F32), Tensor()).shape(),
      (Shape{2, 0}));
}

TEST(NnOpsLinear4bit, MatchesDequantizeThenMatmul) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const std::vector<Shape3> cases = {{1, 7, 64},     {1, 64, 100}, {3, 9, 30},    {4, 33, 128},
                                     {1, 5, 31},     {7, 21, 200}, {2, 130, 512}, {18, 40, 96},
                                     {1, 300, 1000}, {26, 70, 300}};
  for (const Shape3& s : cases)
    for (DType qt : {DType::NF4, DType::FP4})
      for (bool dq : {false, true})
        for (DType cdt : {DType::F32, DType::BF16, DType::F16}) {
          const int64_t bs = (rng() % 2) ? 64 : int64_t(32) << (rng() % 4);
          SCOPED_TRACE(testing::Message()
                       << "M=" << s.M << " N=" << s.N << " K=" << s.K << " " << dtype_name(qt) << " dq=" << dq
                       << " bs=" << bs << " compute=" << dtype_name(cdt));
          Tensor w = test::random_normal({s.N, s.K}, DType::BF16, rng, 0.1f);
          Quantized4 q = quantize_4bit(w, qt, bs, dq);
          Tensor x = test::random_normal({s.M, s.K}, DType::F32, rng);
          Tensor b = random_bias(s.N, int(rng() % 3), rng);
          Tensor mag;
          Tensor ref = ops::ref::linear_4bit(x, q.packed, q.state, b, cdt, &mag);
          const cpu::Isa isa = random_isa(rng);
          SCOPED_TRACE(cpu::isa_name(isa));
          IsaMode mode(isa);
          Tensor y = ops::linear_4bit(x, q.packed, q.state, b, cdt);
          expect_close(y.data<float>(), ref, mag, s.K, cdt);
          // the cached-absmax overload and the backend with a poisoned output
          Tensor absmax = dequantize_absmax(q.state);
          Tensor y2 = ops::linear_4bit(x, q.packed, q.state, absmax, b, cdt);
          EXPECT_EQ(0, std::memcmp(y.data_ptr(), y2.data_ptr(), y.nbytes()));
          std::vector<float> out(static_cast<size_t>(s.M * s.N), kNaN);
          cpu::linear_4bit(x.data<float>(), s.M, s.K, q.packed.data<uint8_t>(), absmax.data<float>(), bs, qt,
                           s.N, b.defined() ? b.data_ptr() : nullptr, b.defined() ? b.dtype() : DType::F32,
                           cdt, out.data());
          expect_close(out.data(), ref, mag, s.K, cdt);
        }
}

// The grouped and gated calls with the input given as RmsNormInput (the decode step's form):
// on the CPU, h_out = h + r and the outputs are bit for bit those of add_rms_norm_ followed by
// the plain calls; h is left as it was.
TEST(NnOpsLinear4bit, RmsNormInputEqualsNormThenCall) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  ExecContext& ctx = ExecContext::current(Device::cpu());
  for (int64_t M : {1, 3})
    for (DType cdt : {DType::F32, DType::BF16}) {
      const int64_t K = 128, N0 = 40, N1 = 24;
      Tensor h = test::random_normal({M, K}, DType::F32, rng),
             r = test::random_normal({M, K}, DType::F32, rng);
      Tensor nw = test::random_normal({K}, DType::BF16, rng, 0.2f);
      std::vector<Quantized4> qs;
      for (int64_t N : {N0, N1, N1})
        qs.push_back(
            quantize_4bit(test::random_normal({N, K}, DType::BF16, rng, 0.1f), DType::NF4, 64, true));
      std::vector<Tensor> absmax, outs_a, outs_b;
      const Tensor none;
      for (int i = 0; i < 3; ++i) {
        absmax.push_back(dequantize_absmax(qs[size_t(i)].state));
        outs_a.push_back(Tensor::empty({M, qs[size_t(i)].state.shape[0]}, DType::F32, Device::cpu()));
        outs_b.push_back(Tensor::empty({M, qs[size_t(i)].state.shape[0]}, DType::F32, Device::cpu()));
      }
      auto refs = [&](std::vector<Tensor>& outs) {
        std::vector<ops::Linear4Ref> v;
        for (int i = 0; i < 3; ++i)
          v.push_back({qs[size_t(i)].packed, qs[size_t(i)].state, absmax[size_t(i)], none, outs[size_t(i)]});
        return v;
      };
      const auto ra = refs(outs_a), rb = refs(outs_b);
      // unfused: h2 = h + r in place, x = rms_norm(h2)
      Tensor h2 = h.contiguous().clone(), x = Tensor::empty({M, K}, DType::F32, Device::cpu());
      ops::add_rms_norm_(ctx, h2, r, nw, 1e-6f, true, x);
      ops::linear_4bit_group(ctx, x, ra, cdt);
      Tensor ga = Tensor::empty({M, N1}, DType::F32, Device::cpu()),
             gb = Tensor::empty({M, N1}, DType::F32, Device::cpu());
      ops::linear_4bit_gated(ctx, x, ra[1], ra[2], ops::Activation::SiLU, cdt, ga);
      // fused form
      Tensor h_in = h.clone(), h_out = Tensor::empty({M, K}, DType::F32, Device::cpu());
      const ops::RmsNormInput in{h_in, r, nw, 1e-6f, true, h_out};
      ops::linear_4bit_group(ctx, in, rb, cdt);
      ops::linear_4bit_gated(ctx, in, rb[1], rb[2], ops::Activation::SiLU, cdt, gb);
      EXPECT_EQ(0, std::memcmp(h_out.data_ptr(), h2.data_ptr(), h2.nbytes()));
      EXPECT_EQ(0, std::memcmp(h_in.data_ptr(), h.data_ptr(), h.nbytes())) << "h was changed";
      for (int i = 0; i < 3; ++i)
        EXPECT_EQ(0, std::memcmp(outs_a[size_t(i)].data_ptr(), outs_b[size_t(i)].data_ptr(),
                                 outs_a[size_t(i)].nbytes()))
            << "weight " << i;
      EXPECT_EQ(0, std::memcmp(ga.data_ptr(), gb.data_ptr(), ga.nbytes()));
    }
}

TEST(NnOpsLinear4bit, GemvPathsMatchReference) {
  // M <= 4 with K % 8 == 0 takes the in-register decoder: every compute dtype (three decode
  // modes), rows that straddle blocks, segments that are not a multiple of 32.
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t M : {1, 2, 3, 4})
    for (int64_t K : {8, 24, 40, 64, 200, 1032})
      for (int64_t bs : {32, 64, 128})
        for (DType cdt : {DType::F32, DType::BF16, DType::F16}) {
          const int64_t N = 1 + int64_t(rng() % 19);
          const DType qt = rng() % 2 ? DType::NF4 : DType::FP4;
          SCOPED_TRACE(testing::Message() << "M=" << M << " N=" << N << " K=" << K << " bs=" << bs << " "
                                          << dtype_name(qt) << " compute=" << dtype_name(cdt));
          Tensor w = test::random_normal({N, K}, DType::F32, rng, 0.1f);
          Quantized4 q = quantize_4bit(w, qt, bs, false);
          Tensor x = test::random_normal({M, K}, DType::F32, rng);
          Tensor mag;
          Tensor ref = ops::ref::linear_4bit(x, q.packed, q.state, Tensor(), cdt, &mag);
          for (cpu::Isa isa : cpu_isas()) {
            SCOPED_TRACE(cpu::isa_name(isa));
            IsaMode mode(isa);
            Tensor y = ops::linear_4bit(x, q.packed, q.state, Tensor(), cdt);
            expect_close(y.data<float>(), ref, mag, K, cdt);
          }
        }
}

TEST(NnOpsLinear4bit, WideGemvKernelsMatchReference) {
  // The AVX-512 decoders step 32 (f32 table) or 64 (bf16 table) weights at a time and run
  // 2-4 rows of W per pass: K and blocksizes on and off those steps, blocks straddling rows
  // (K % blocksize != 0: one row at a time), N off the row groups, nested absmax.
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t M : {1, 2, 3, 4})
    for (int64_t K : {32, 64, 96, 192, 448, 1024})
      for (int64_t bs : {32, 64, 128, 256})
        for (DType cdt : {DType::F32, DType::BF16, DType::F16}) {
          const int64_t N = 1 + int64_t(rng() % 41);
          const DType qt = rng() % 2 ? DType::NF4 : DType::FP4;
          const bool dq = rng() % 2;
          SCOPED_TRACE(testing::Message()
                       << "M=" << M << " N=" << N << " K=" << K << " bs=" << bs << " " << dtype_name(qt)
                       << " dq=" << dq << " compute=" << dtype_name(cdt));
          Tensor w = test::random_normal({N, K}, DType::BF16, rng, 0.1f);
          Quantized4 q = quantize_4bit(w, qt, bs, dq);
          Tensor absmax = dequantize_absmax(q.state);
          Tensor x = test::random_normal({M, K}, DType::F32, rng);
          Tensor mag;
          Tensor ref = ops::ref::linear_4bit(x, q.packed, q.state, Tensor(), cdt, &mag);
          for (cpu::Isa isa : cpu_isas()) {
            SCOPED_TRACE(cpu::isa_name(isa));
            IsaMode mode(isa);
            std::vector<float> out(static_cast<size_t>(M * N), kNaN);
            cpu::linear_4bit(x.data<float>(), M, K, q.packed.data<uint8_t>(), absmax.data<float>(), bs, qt, N,
                             nullptr, DType::F32, cdt, out.data());
            expect_close(out.data(), ref, mag, K, cdt);
          }
        }
}

TEST(NnOpsLinear4bit, SubnormalInputsAndTinyAbsmax) {
  // vdpbf16ps reads bf16 subnormals as zero, so x with subnormals must take the f32 kernel;
  // blocks with absmax near FLT_MIN need the flush-to-zero of dequantize_4bit. Inputs of 1e-39
  // (subnormal in bf16) times weights of ~0.1 sum to a normal number, so a dropped x shows.
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t M = 1, N = 19, K = 256, bs = 64;
  Tensor w = test::random_normal({N, K}, DType::F32, rng, 0.1f);
  for (int64_t i = 0; i < 2 * K; ++i)
    w.data<float>()[i] *= 1e-37f;  // rows 0-1: absmax ~3e-38, some weights subnormal
  for (DType qt : {DType::NF4, DType::FP4}) {
    Quantized4 q = quantize_4bit(w, qt, bs, false);
    Tensor x = test::random_normal({M, K}, DType::F32, rng);
    for (int64_t k = 0; k < K; k += 2) x.data<float>()[k] = (k % 4 ? 1e-39f : -2e-39f) * float(1 + k % 7);
    for (DType cdt : {DType::BF16, DType::F32}) {
      Tensor mag;
      Tensor ref = ops::ref::linear_4bit(x, q.packed, q.state, Tensor(), cdt, &mag);
      for (cpu::Isa isa : cpu_isas()) {
        SCOPED_TRACE(testing::Message()
                     << dtype_name(qt) << " " << dtype_name(cdt) << " " << cpu::isa_name(isa));
        IsaMode mode(isa);
        std::vector<float> out(static_cast<size_t>(M * N), kNaN);
        cpu::linear_4bit(x.data<float>(), M, K, q.packed.data<uint8_t>(), q.state.absmax.data<float>(), bs,
                         qt, N, nullptr, DType::F32, cdt, out.data());
        expect_close(out.data(), ref, mag, K, cdt, 0.0);  // no absolute floor: these sums are ~1e-37
      }
    }
  }
}

TEST(NnOpsLinear4bit, DequantizeRangeMatchesReference) {
  // Arbitrary element ranges (odd starts, blocks straddling rows) give the reference's values.
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t n = 5001;
  Tensor w = test::random_normal({n}, DType::F32, rng);
  for (DType qt : {DType::NF4, DType::FP4})
    for (int64_t bs : {32, 64, 256}) {
      Quantized4 q = quantize_4bit(w, qt, bs, false);
      for (DType odt : {DType::F32, DType::F16, DType::BF16}) {
        const cpu::Isa isa = random_isa(rng);
        SCOPED_TRACE(cpu::isa_name(isa));
        IsaMode mode(isa);
        Tensor full = Tensor::empty({n}, odt);
        quant::ref::dequantize_4bit(q.packed.data<uint8_t>(), q.state.absmax.data<float>(), n, bs, qt,
                                    full.data_ptr(), odt);
        for (int t = 0; t < 20; ++t) {
          int64_t e0 = int64_t(rng() % n), e1 = std::min<int64_t>(n, e0 + int64_t(rng() % 700));
          SCOPED_TRACE(testing::Message() << dtype_name(qt) << " bs=" << bs << " " << dtype_name(odt) << " ["
                                          << e0 << ", " << e1 << ")");
          const int64_t es = dtype_bits(odt) / 8;
          std::vector<uint8_t> out(static_cast<size_t>((e1 - e0 + 1) * es), 0xff);
          cpu::dequantize_4bit_range(q.packed.data<uint8_t>(), q.state.absmax.data<float>(), bs, qt, e0, e1,
                                     out.data(), odt);
          ASSERT_EQ(0, std::memcmp(out.data(), static_cast<char*>(full.data_ptr()) + e0 * es,
                                   size_t((e1 - e0) * es)));
          ASSERT_EQ(0xff, out[size_t((e1 - e0) * es)]) << "wrote past the range";
        }
      }
    }
}

TEST(NnOpsLinear4bit, DequantizeRangeToBf16SameBitsAtEveryIsaLevel) {
  // The bf16 dequantization (the AMX GEMM's weight supply; 32 values a step with AVX512_BF16):
  // ranges on and off the 32-value steps, every level, absmax specials (subnormal: flushed,
  // huge: products overflow to inf, NaN, zero, subnormal products) and values that round to
  // even in bf16.
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t n = 64 * 40;
  Tensor w = test::random_normal({n}, DType::F32, rng);
  for (DType qt : {DType::NF4, DType::FP4})
    for (int64_t bs : {32, 64, 128}) {
      Quantized4 q = quantize_4bit(w, qt, bs, false);
      float* am = q.state.absmax.data<float>();
      am[1] = 1e-39f;                                   // subnormal: every value flushes to zero
      am[2] = 3.0e38f;                                  // products past FLT_MAX: inf
      am[3] = std::numeric_limits<float>::quiet_NaN();  // NaN stays NaN
      am[4] = 0.0f;
      am[5] = 1.00390625f;  // 1 + 2^-8: products land halfway between bf16 values
      am[6] = 2.0e-38f;     // normal, but its products with the small codes are subnormal: flushed
      Tensor full = Tensor::empty({n}, DType::BF16);
      quant::ref::dequantize_4bit(q.packed.data<uint8_t>(), am, n, bs, qt, full.data_ptr(), DType::BF16);
      const std::vector<std::pair<int64_t, int64_t>> ranges = {
          {0, n}, {32, 32 * 9}, {5, 700}, {64, 64 + 33}, {n - 40, n}, {31, 33}, {96, 96 + 32 * 5}};
      for (cpu::Isa isa : cpu_isas()) {
        IsaMode mode(isa);
        for (auto [e0, e1] : ranges) {
          SCOPED_TRACE(testing::Message() << dtype_name(qt) << " bs=" << bs << " " << cpu::isa_name(isa)
                                          << " [" << e0 << ", " << e1 << ")");
          std::vector<uint16_t> out(size_t(e1 - e0 + 1), 0xffff);
          cpu::dequantize_4bit_range(q.packed.data<uint8_t>(), am, bs, qt, e0, e1, out.data(), DType::BF16);
          ASSERT_EQ(0, std::memcmp(out.data(), full.data<uint16_t>() + e0, size_t(e1 - e0) * 2));
          ASSERT_EQ(0xffff, out[size_t(e1 - e0)]) << "wrote past the range";
        }
      }
      // the AMX GEMM's pack order (64-value steps: the 32 even elements, then the 32 odd ones)
      if (bs % 64 == 0 && cpu::detected_isa() >= cpu::Isa::Avx512Bf16)
        for (auto [e0, count] : std::vector<std::pair<int64_t, int64_t>>{{0, n}, {64, 128}, {n - 64, 64}}) {
          SCOPED_TRACE(testing::Message() << dtype_name(qt) << " bs=" << bs << " pack order from " << e0);
          std::vector<uint16_t> out(size_t(count + 1), 0xffff);
          cpu::avx512::dequantize_4bit_bf16_pack_order(q.packed.data<uint8_t>(), am, bs, qt, e0, count,
                                                       out.data());
          for (int64_t p = 0; p < count; ++p) {
            const int64_t c = p / 64 * 64, r = p % 64, e = e0 + c + (r < 32 ? 2 * r : 2 * (r - 32) + 1);
            ASSERT_EQ(out[size_t(p)], full.data<uint16_t>()[e]) << "position " << p;
          }
          ASSERT_EQ(0xffff, out[size_t(count)]) << "wrote past the range";
        }
    }
}

TEST(NnOpsLinearInt8, MatchesBitsandbytesAlgorithm) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const std::vector<Shape3> cases = {{1, 7, 64},   {1, 50, 33},   {3, 9, 30},   {4, 33, 128},
                                     {7, 21, 200}, {2, 130, 515}, {18, 40, 96}, {1, 200, 1000}};
  for (const Shape3& s : cases)
    for (float threshold : {0.0f, 6.0f})
      for (DType act : {DType::F16, DType::F32, DType::BF16})
        for (int bias_kind = 0; bias_kind < 3; ++bias_kind) {
          SCOPED_TRACE(testing::Message()
                       << "M=" << s.M << " N=" << s.N << " K=" << s.K << " threshold=" << threshold
                       << " act=" << dtype_name(act) << " bias=" << bias_kind);
          Tensor w = test::random_normal({s.N, s.K}, DType::F16, rng, 0.05f);
          Int8Rowwise wq = int8_vectorwise_quant(w, 0.0f);
          Tensor x = test::random_normal({s.M, s.K}, DType::F32, rng);
          // a few outlier columns (|x| >= 6) in some rows
          for (int o = 0; o < 3; ++o) {
            int64_t m = int64_t(rng() % s.M), k = int64_t(rng() % s.K);
            x.data<float>()[m * s.K + k] = (rng() % 2 ? 1.0f : -1.0f) * (6.0f + float(rng() % 100) / 10.0f);
          }
          Tensor b = bias_kind == 0
                         ? Tensor()
                         : test::random_normal({s.N}, bias_kind == 1 ? DType::F16 : DType::F32, rng);
          Tensor ref = ops::ref::linear_int8(x, wq.CA, wq.SCA, b, threshold, act);
          const cpu::Isa isa = random_isa(rng);
          SCOPED_TRACE(cpu::isa_name(isa));
          IsaMode mode(isa);
          Tensor y = ops::linear_int8(x, wq.CA, wq.SCA, b, threshold, act);
          std::vector<float> out(static_cast<size_t>(s.M * s.N), kNaN);
          cpu::linear_int8(x.data<float>(), s.M, s.K, wq.CA.data<int8_t>(), wq.SCA.data<float>(), s.N,
                           b.defined() ? b.data_ptr() : nullptr, b.defined() ? b.dtype() : DType::F32,
                           threshold, act, out.data());
          double scale = 0.0;
          for (int64_t i = 0; i < s.M * s.N; ++i)
            scale = std::max(scale, double(std::fabs(ref.data<float>()[i])));
          for (int64_t i = 0; i < s.M * s.N; ++i) {
            const float r = ref.data<float>()[i];
            // the int8 part is bit exact; the outlier sum (f32 here, double in the reference) may
            // differ in its last bits, which can move the final rounding by one step of act_dtype
            const double tol = threshold > 0.0f ? ulp(act, std::fabs(r)) * 1.01 + 1e-6 * scale : 0.0;
            ASSERT_LE(std::fabs(double(y.data<float>()[i]) - r), tol) << "element " << i;
            ASSERT_LE(std::fabs(double(out[size_t(i)]) - r), tol) << "element " << i << " (backend)";
          }
        }
}

TEST(NnOpsLinearInt8, CloseToFloatMatmulWithOutliers) {
  // Sanity of the decomposition itself: with outliers split off, the result stays within
  // int8 quantization error of the f32 matmul of the dequantized weight; without the split
  // (threshold 0) an outlier of 50 destroys the other columns' resolution.
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t M = 4, N = 64, K = 256;
  Tensor w = test::random_normal({N, K}, DType::F16, rng, 0.05f);
  Int8Rowwise wq = int8_vectorwise_quant(w, 0.0f);
  Tensor wdq = int8_vectorwise_dequant(wq.CA, wq.SCA);
  Tensor x = test::random_normal({M, K}, DType::F32, rng);
  for (int64_t m = 0; m < M; ++m) x.data<float>()[m * K + 17] = 50.0f;
  Tensor exact = ops::ref::linear(x, wdq, Tensor(), DType::F32);
  Tensor with = ops::linear_int8(x, wq.CA, wq.SCA, Tensor(), 6.0f);
  Tensor without = ops::linear_int8(x, wq.CA, wq.SCA, Tensor(), 0.0f);
  double err_with = 0, err_without = 0, scale = 0;
  for (int64_t i = 0; i < M * N; ++i) {
    scale = std::max(scale, std::fabs(exact.data<double>()[i]));
    err_with = std::max(err_with, std::fabs(with.data<float>()[i] - exact.data<double>()[i]));
    err_without = std::max(err_without, std::fabs(without.data<float>()[i] - exact.data<double>()[i]));
  }
  EXPECT_LT(err_with, 0.02 * scale);
  EXPECT_GT(err_without, 2 * err_with);
}

TEST(NnOpsErrors, WrongShapesAndDtypesThrow) {
  std::mt19937_64 rng(1);
  Tensor x = test::random_normal({3, 8}, DType::F32, rng);
  Tensor w = test::random_normal({5, 8}, DType::BF16, rng);
  EXPECT_THROW(ops::linear(x, test::random_normal({5, 9}, DType::F32, rng), Tensor()), ShapeError);
  EXPECT_THROW(ops::linear(x.to(DType::F16), w, Tensor()), ShapeError);
  EXPECT_THROW(ops::linear(x, Tensor::zeros({5, 8}, DType::I32), Tensor()), ShapeError);
  EXPECT_THROW(ops::linear(x, w, Tensor::zeros({4}, DType::F32)), ShapeError);
  EXPECT_THROW(ops::linear(x, w, Tensor(), DType::I8), ShapeError);
  EXPECT_THROW(ops::linear(Tensor(), w, Tensor()), ShapeError);

  Quantized4 q = quantize_4bit(w, DType::NF4, 64, true);
  EXPECT_THROW(
      ops::linear_4bit(test::random_normal({3, 7}, DType::F32, rng), q.packed, q.state, Tensor(), DType::F32),
      ShapeError);
  EXPECT_THROW(ops::linear_4bit(x, q.packed.slice(0, 0, 10), q.state, Tensor(), DType::F32), ShapeError);
  EXPECT_THROW(ops::linear_4bit(x, q.packed, q.state, Tensor::zeros({3}, DType::F32), Tensor(), DType::F32),
               ShapeError);
  EXPECT_THROW(ops::linear_4bit(x, q.packed, q.state, Tensor(), DType::I8), ShapeError);

  Int8Rowwise wq = int8_vectorwise_quant(w.to(DType::F16), 0.0f);
  EXPECT_THROW(ops::linear_int8(x, wq.CA.to(DType::F32), wq.SCA, Tensor(), 6.0f), ShapeError);
  EXPECT_THROW(ops::linear_int8(x, wq.CA, Tensor::zeros({4}, DType::F32), Tensor(), 6.0f), ShapeError);
  EXPECT_THROW(ops::linear_int8(x, wq.CA, wq.SCA, Tensor(), -1.0f), ShapeError);
  EXPECT_THROW(ops::linear_int8(test::random_normal({3, 9}, DType::F32, rng), wq.CA, wq.SCA, Tensor(), 6.0f),
               ShapeError);
}

// A batched decode step's table forms of the KV write and attention against one call a
// sequence (CPU: the same kernels a sequence at a time, so bit for bit).
TEST(NnOpsAttention, BatchedDecodeTableEqualsPerSequence) {
  test::check_batched_decode(Device::cpu(), DType::F32, test::fresh_seed(), 0.0);
}
