// Norms, activations, rotary embedding and attention against the double-precision
// references of ops/nn_ref.h on fresh random inputs: odd sizes, GQA ratios 1/2/4, sliding
// window, softcap and alibi on and off, q_offset > 0 (KV cache), rows that see no key; the
// AVX2 and portable kernels alike; backend calls write into NaN-poisoned buffers. Also the
// shape/dtype errors of these ops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backends/cpu/linear_cpu.h"
#include "backends/cpu/nn_cpu.h"
#include "cpu_isa_mode.h"
#include "ops/nn_ops.h"
#include "ops/nn_ref.h"
#include "test_support.h"

using namespace nibble;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct KernelMode {
  explicit KernelMode(bool portable) { cpu::set_portable_kernels(portable); }
  ~KernelMode() { cpu::set_portable_kernels(false); }
};

double f(const Tensor& t, int64_t i) {
  return load_as_f32(t.data_ptr(), t.dtype(), i);
}

}  // namespace

TEST(NnOpsNorm, RmsNormMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t M : {1, 3, 17})
    for (int64_t C : {1, 7, 64, 1000})
      for (DType wdt : {DType::F32, DType::BF16, DType::F16})
        for (bool unit : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "M=" << M << " C=" << C << " w=" << dtype_name(wdt) << " unit=" << unit);
          Tensor x = test::random_normal({M, C}, DType::F32, rng, 3.0f);
          Tensor w = test::random_normal({C}, wdt, rng);
          const float eps = C == 1 ? 1e-2f : 1e-6f;
          Tensor ref = ops::ref::rms_norm(x, w, eps, unit);
          Tensor y = ops::rms_norm(x, w, eps, unit);
          std::vector<float> out(static_cast<size_t>(M * C), kNaN);
          cpu::rms_norm(x.data<float>(), M, C, w.data_ptr(), wdt, eps, unit, out.data());
          for (int64_t i = 0; i < M * C; ++i) {
            const double r = ref.data<double>()[i], tol = 2e-6 * std::fabs(r) + 1e-30;
            ASSERT_LE(std::fabs(y.data<float>()[i] - r), tol) << i;
            ASSERT_LE(std::fabs(out[size_t(i)] - r), tol) << i;
          }
        }
}

TEST(NnOpsNorm, LayerNormMatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t M : {1, 5})
    for (int64_t C : {2, 9, 768})
      for (bool bias : {false, true}) {
        SCOPED_TRACE(testing::Message() << "M=" << M << " C=" << C << " bias=" << bias);
        Tensor x = test::random_normal({M, C}, DType::F32, rng);
        for (int64_t i = 0; i < M * C; ++i) x.data<float>()[i] += 4.0f;  // a mean to subtract
        Tensor w = test::random_normal({C}, DType::F32, rng),
               b = bias ? test::random_normal({C}, DType::BF16, rng) : Tensor();
        Tensor ref = ops::ref::layer_norm(x, w, b, 1e-5f);
        Tensor y = ops::layer_norm(x, w, b, 1e-5f);
        for (int64_t m = 0; m < M; ++m) {
          double mean = 0, var = 0;
          for (int64_t c = 0; c < C; ++c) mean += f(x, m * C + c) / double(C);
          for (int64_t c = 0; c < C; ++c)
            var += (f(x, m * C + c) - mean) * (f(x, m * C + c) - mean) / double(C);
          const double rstd = 1.0 / std::sqrt(var + 1e-5);
          for (int64_t c = 0; c < C; ++c) {
            const int64_t i = m * C + c;
            // (x - mean) loses the rounding of mean and x relative to |x| + |mean|
            const double tol = 2e-6 * (std::fabs(f(w, c)) * rstd * (std::fabs(f(x, i)) + std::fabs(mean)) +
                                       (bias ? std::fabs(f(b, c)) : 0.0)) +
                               1e-30;
            ASSERT_LE(std::fabs(y.data<float>()[i] - ref.data<double>()[i]), tol) << i;
          }
        }
      }
}

TEST(NnOpsActivation, MatchReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t n = 3001;
  Tensor g = test::random_normal({n}, DType::F32, rng, 4.0f), u = test::random_normal({n}, DType::F32, rng);
  const float specials[] = {0.0f, -0.0f, 30.0f, -30.0f, 1e-20f, -1e-20f, 88.0f, -100.0f};
  for (int i = 0; i < 8; ++i) g.data<float>()[i] = specials[i];
  for (auto a :
       {ops::Activation::SiLU, ops::Activation::GeluErf, ops::Activation::GeluTanh, ops::Activation::ReLU}) {
    SCOPED_TRACE(testing::Message() << "activation " << int(a));
    Tensor x = g.clone();
    ops::activate_(x, a);
    Tensor gu = ops::gated_activation(g, u, a);
    for (int64_t i = 0; i < n; ++i) {
      const double xi = g.data<float>()[i], r = ops::ref::activation(xi, a);
      // 1 - erf / 1 + tanh cancel for negative x in f32, as in torch: error up to ~eps * |x|
      const double tol = 2e-6 * std::fabs(r) + 2e-7 * std::fabs(xi) + 1e-37;
      ASSERT_LE(std::fabs(x.data<float>()[i] - r), tol) << "x=" << xi;
      ASSERT_LE(std::fabs(gu.data<float>()[i] - r * u.data<float>()[i]),
                tol * std::fabs(u.data<float>()[i]) + 1e-37)
          << "x=" << xi;
    }
  }
}

TEST(NnOpsRope, MatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (auto [T, H, D, rot] : std::vector<std::array<int64_t, 4>>{
           {1, 1, 2, 2}, {5, 3, 64, 64}, {7, 4, 80, 20}, {3, 2, 130, 96}, {9, 1, 10, 4}}) {
    SCOPED_TRACE(testing::Message() << "T=" << T << " H=" << H << " D=" << D << " rot=" << rot);
    Tensor x = test::random_normal({T, H, D}, DType::F32, rng);
    Tensor ang = test::random_normal({T, rot / 2}, DType::F32, rng, 3.0f);
    Tensor c = Tensor::empty({T, rot / 2}, DType::F32), s = Tensor::empty({T, rot / 2}, DType::F32);
    for (int64_t i = 0; i < ang.numel(); ++i) {
      c.data<float>()[i] = std::cos(ang.data<float>()[i]);
      s.data<float>()[i] = std::sin(ang.data<float>()[i]);
    }
    Tensor ref = ops::ref::rope(x, c, s, rot);
    Tensor y = x.clone();
    ops::apply_rope_(y, c, s, rot);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t i = (t * H + h) * D + d;
          if (d >= rot) {
            ASSERT_EQ(f32_bits(y.data<float>()[i]), f32_bits(x.data<float>()[i]))
                << "dim past rot_dim changed";
            continue;
          }
          const int64_t half = rot / 2, j = d % half;
          const double mag = std::fabs(f(x, i) * f(c, t * half + j)) +
                             std::fabs(f(x, d < half ? i + half : i - half) * f(s, t * half + j));
          ASSERT_LE(std::fabs(y.data<float>()[i] - ref.data<double>()[i]), 2.5e-7 * mag + 1e-37) << i;
        }
  }
}

TEST(NnOpsAttention, MatchesReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  struct Case {
    int64_t T, q_offset, S, Hq, Hkv, D, Dv;
  };
  const std::vector<Case> cases = {{1, 0, 1, 1, 1, 8, 8},
                                   {1, 40, 41, 4, 4, 64, 64},
                                   {5, 0, 5, 4, 2, 13, 13},
                                   {17, 3, 20, 8, 2, 80, 80},
                                   {7, 0, 7, 2, 1, 16, 24},
                                   {4, 9, 13, 6, 3, 33, 33},
                                   {33, 0, 33, 4, 1, 64, 64},
                                   {3, 0, 2, 2, 2, 8, 8},
                                   {1, 150, 151, 8, 2, 128, 128},
                                   // AVX-512 tiles of 8 rows: a partial last tile, head dims off 16, chunked
                                   // prefill, keys fewer than rows (q_offset + T > S)
                                   {12, 0, 12, 2, 1, 16, 24},
                                   {20, 5, 25, 4, 2, 13, 13},
                                   {70, 30, 100, 4, 2, 64, 64},
                                   {9, 0, 9, 3, 3, 40, 40},
                                   {16, 0, 12, 2, 1, 32, 32}};
  // the levels below the detected one whose attention differs: scalar (variant % 2), AVX2, tiles
  std::vector<cpu::Isa> levels = {cpu::detected_isa()};
  if (cpu::detected_isa() >= cpu::Isa::Avx512) levels.push_back(cpu::Isa::Avx2);
  for (const cpu::Isa level : levels)
    for (const Case& c : cases)
      for (int variant = 0; variant < 6; ++variant) {
        ops::AttentionOptions o;
        o.scale = 1.0f / std::sqrt(float(c.D));
        o.q_offset = c.q_offset;
        if (variant == 1 || variant == 4) o.sliding_window = 1 + int64_t(rng() % 8);
        if (variant == 2 || variant == 4) {
          o.softcap = 2.0f;
          o.scale = 1.0f;  // scores of a few units, so the cap bends them
        }
        std::vector<float> slopes(static_cast<size_t>(c.Hq));
        for (int64_t h = 0; h < c.Hq; ++h)
          slopes[size_t(h)] = std::pow(2.0f, -8.0f * float(h + 1) / float(c.Hq));
        if (variant == 3 || variant == 5) o.alibi_slopes = Tensor::from_vector({c.Hq}, DType::F32, slopes);
        const bool portable = variant % 2 == 1;
        if (portable && level != levels[0]) continue;  // the scalar path once
        test::IsaMode isa(portable ? cpu::Isa::Scalar : level);
        SCOPED_TRACE(testing::Message()
                     << "isa " << cpu::isa_name(level) << " "
                     << "T=" << c.T << " off=" << c.q_offset << " S=" << c.S << " Hq=" << c.Hq
                     << " Hkv=" << c.Hkv << " D=" << c.D << " Dv=" << c.Dv << " variant=" << variant);
        Tensor q = test::random_normal({c.T, c.Hq, c.D}, DType::F32, rng);
        Tensor k = test::random_normal({c.S, c.Hkv, c.D}, DType::F32, rng);
        Tensor v = test::random_normal({c.S, c.Hkv, c.Dv}, DType::F32, rng);
        double vmax = 0;
        for (int64_t i = 0; i < v.numel(); ++i) vmax = std::max(vmax, std::fabs(f(v, i)));
        Tensor ref = ops::ref::attention(q, k, v, o);
        Tensor y = ops::attention(q, k, v, o);
        ASSERT_EQ(y.shape(), (Shape{c.T, c.Hq, c.Dv}));
        cpu::AttentionShape a{c.T,
                              c.S,
                              c.Hq,
                              c.Hkv,
                              c.D,
                              c.Dv,
                              o.scale,
                              o.q_offset,
                              o.sliding_window.value_or(0),
                              o.softcap.value_or(0.0f),
                              o.alibi_slopes.defined() ? slopes.data() : nullptr};
        std::vector<float> out(static_cast<size_t>(y.numel()), kNaN);
        cpu::attention(q.data<float>(), k.data<float>(), v.data<float>(), a, out.data());
        // score errors of a few f32 ulps of sum |q k| (times the alibi/scale magnitudes) move the
        // probabilities by that relative amount
        const double tol = 1e-5 * vmax;
        for (int64_t i = 0; i < y.numel(); ++i) {
          ASSERT_LE(std::fabs(y.data<float>()[i] - ref.data<double>()[i]), tol) << "element " << i;
          ASSERT_LE(std::fabs(out[size_t(i)] - ref.data<double>()[i]), tol)
              << "element " << i << " (backend)";
        }
      }
}

TEST(NnOpsAttention, DecodeRowEqualsLastPrefillRow) {
  // One query at q_offset = S - 1 against the cache equals the last row of the full prefill.
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t S = 70, Hq = 4, Hkv = 2, D = 32;
  Tensor q = test::random_normal({S, Hq, D}, DType::F32, rng);
  Tensor k = test::random_normal({S, Hkv, D}, DType::F32, rng),
         v = test::random_normal({S, Hkv, D}, DType::F32, rng);
  ops::AttentionOptions o;
  o.scale = 0.2f;
  o.sliding_window = 50;
  Tensor full = ops::attention(q, k, v, o);
  o.q_offset = S - 1;
  Tensor last = ops::attention(q.slice(0, S - 1, S), k, v, o);
  EXPECT_EQ(0, std::memcmp(last.data_ptr(), full.select(0, S - 1).contiguous().data_ptr(), last.nbytes()));
}

TEST(NnOpsAttention, DevicePositionFormsEqualPlainForms) {
  // q_pos (the position read at run time, whole cache given) equals q_offset over keys
  // [0, pos]; copy_at_ writes the rows at *row0. Bad positions are refused.
  std::mt19937_64 rng(test::fresh_seed());
  const int64_t cap = 40, pos = 23, Hq = 4, Hkv = 2, D = 16;
  Tensor q = test::random_normal({1, Hq, D}, DType::F32, rng);
  Tensor k = test::random_normal({cap, Hkv, D}, DType::F32, rng),
         v = test::random_normal({cap, Hkv, D}, DType::F32, rng);
  ops::AttentionOptions o;
  o.scale = 0.3f;
  o.sliding_window = 9;
  o.q_offset = pos;
  Tensor plain = ops::attention(q, k.slice(0, 0, pos + 1), v.slice(0, 0, pos + 1), o);
  ops::AttentionOptions od = o;
  od.q_offset = 0;
  od.q_pos = Tensor::from_vector({1}, DType::I64, std::vector<int64_t>{pos});
  Tensor dev = ops::attention(q, k, v, od);
  EXPECT_EQ(0, std::memcmp(plain.data_ptr(), dev.data_ptr(), plain.nbytes()));
  od.q_pos = Tensor::from_vector({1}, DType::I64, std::vector<int64_t>{cap});
  EXPECT_THROW(ops::attention(q, k, v, od), ShapeError);

  ExecContext& ctx = ExecContext::current(Device::cpu());
  Tensor src = test::random_normal({2, 8}, DType::F32, rng);
  Tensor a = Tensor::zeros({10, 8}, DType::BF16), b = Tensor::zeros({10, 8}, DType::BF16);
  ops::copy_(ctx, src, a.slice(0, 6, 8));
  ops::copy_at_(ctx, src, b, Tensor::from_vector({1}, DType::I64, std::vector<int64_t>{6}));
  EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()));
  EXPECT_THROW(ops::copy_at_(ctx, src, b, Tensor::from_vector({1}, DType::I64, std::vector<int64_t>{9})),
               ShapeError);
}

// Raw bits of one f32/f16/bf16 element of a contiguous tensor, widened for comparison.
uint32_t bits_at(const Tensor& t, int64_t i) {
  if (t.dtype() == DType::F32) {
    uint32_t u;
    std::memcpy(&u, t.data<float>() + i, 4);
    return u;
  }
  return static_cast<const uint16_t*>(t.data_ptr())[i];
}

TEST(NnOpsCopy, ConvertsEveryFloatPairBitExactAtEveryIsa) {
  // copy_ / to_dtype between f32, f16 and bf16 equal Tensor::to (load_as_f32, store_from_f32)
  // bit for bit, at every SIMD level: values of every magnitude, specials (NaNs with payloads
  // of either sign, infinities, signed zeros, f32 and f16 subnormals, values that round to
  // f16 inf or to its subnormals, ties), strided rows, odd widths, and a copy large enough to
  // be split over threads.
  std::mt19937_64 rng(test::fresh_seed());
  std::uniform_int_distribution<uint32_t> any;
  const std::vector<uint32_t> specials = {0x7fc00000u, 0xffc00001u, 0x7f800001u, 0xff812345u, 0x7f800000u,
                                          0xff800000u, 0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu,
                                          0x33000000u, 0x33000001u, 0x387fe000u, 0x38800000u, 0x477fe000u,
                                          0x477ff000u, 0xc77fefffu, 0x3f808000u, 0x3f818000u, 0x3f800fffu};
  const DType kinds[] = {DType::F32, DType::F16, DType::BF16};
  int checked = 0;
  for (DType sdt : kinds)
    for (DType ddt : kinds)
      for (auto [rows, cols, pad] :
           {std::tuple<int64_t, int64_t, int64_t>{3, 37, 5}, {1, 16, 0}, {301, 700, 3}}) {
        // f32 values from random bits, specials and exponents near the f16/bf16 edges, then
        // stored in sdt (so f16/bf16 sources hold their own specials too).
        Tensor wide = Tensor::empty({rows, cols + pad}, DType::F32);
        float* w = wide.data<float>();
        for (int64_t i = 0; i < wide.numel(); ++i) {
          uint32_t u = any(rng);
          if (i % 7 == 0)
            u = specials[size_t(i / 7) % specials.size()];
          else if (i % 3 == 0)
            u = (u & 0x807fffffu) | ((uint32_t(100 + u % 60)) << 23);
          std::memcpy(w + i, &u, 4);
        }
        Tensor src_full = wide.to(sdt);
        Tensor src = src_full.slice(1, 0, cols);  // strided rows
        Tensor want = src.contiguous().to(ddt);
        for (cpu::Isa isa : test::cpu_isas()) {
          test::IsaMode mode(isa);
          Tensor got = Tensor::empty({rows, cols}, ddt);
          std::memset(got.data_ptr(), 0x5a, size_t(got.nbytes()));
          ops::copy_(ExecContext::current(Device::cpu()), src, got);
          for (int64_t i = 0; i < rows * cols; ++i)
            if (bits_at(got, i) != bits_at(want, i)) {
              ADD_FAILURE() << dtype_name(sdt) << " -> " << dtype_name(ddt) << " at " << cpu::isa_name(isa)
                            << ", element " << i << ": got 0x" << std::hex << bits_at(got, i) << ", want 0x"
                            << bits_at(want, i);
              break;
            }
          ++checked;
        }
        Tensor t = ops::to_dtype(src, ddt).contiguous();
        ASSERT_EQ(t.dtype(), ddt);
        EXPECT_EQ(0, std::memcmp(t.data_ptr(), want.data_ptr(), size_t(want.nbytes())));
      }
  EXPECT_EQ(checked, 27 * int(test::cpu_isas().size()));
  EXPECT_THROW(ops::copy_(ExecContext::current(Device::cpu()), Tensor::zeros({2, 2}, DType::I32),
                          Tensor::zeros({2, 2}, DType::F32)),
               ShapeError);
}

TEST(NnOpsErrors, LayerOpsThrowOnBadShapes) {
  std::mt19937_64 rng(2);
  Tensor x = test::random_normal({3, 8}, DType::F32, rng);
  EXPECT_THROW(ops::rms_norm(x, Tensor::zeros({7}, DType::F32), 1e-6f), ShapeError);
  EXPECT_THROW(ops::rms_norm(x.to(DType::BF16), Tensor::zeros({8}, DType::F32), 1e-6f), ShapeError);
  EXPECT_THROW(ops::layer_norm(x, Tensor::zeros({8}, DType::F32), Tensor::zeros({9}, DType::F32), 1e-5f),
               ShapeError);
  EXPECT_THROW(ops::gated_activation(x, Tensor::zeros({3, 9}, DType::F32), ops::Activation::SiLU),
               ShapeError);
  Tensor xt = x.transpose(0, 1);
  EXPECT_THROW(ops::activate_(xt, ops::Activation::ReLU), ShapeError);

  Tensor r = test::random_normal({4, 2, 16}, DType::F32, rng);
  EXPECT_THROW(ops::apply_rope_(r, Tensor::zeros({4, 8}, DType::F32), Tensor::zeros({4, 7}, DType::F32), 16),
               ShapeError);
  EXPECT_THROW(ops::apply_rope_(r, Tensor::zeros({4, 9}, DType::F32), Tensor::zeros({4, 9}, DType::F32), 18),
               ShapeError);
  EXPECT_THROW(ops::apply_rope_(r, Tensor::zeros({4, 4}, DType::F32), Tensor::zeros({4, 4}, DType::F32), 7),
               ShapeError);

  Tensor q = test::random_normal({2, 6, 8}, DType::F32, rng);
  Tensor k = test::random_normal({5, 4, 8}, DType::F32, rng);  // 6 % 4 != 0
  EXPECT_THROW(ops::attention(q, k, k, {}), ShapeError);
  Tensor k2 = test::random_normal({5, 3, 8}, DType::F32, rng),
         v2 = test::random_normal({4, 3, 8}, DType::F32, rng);
  EXPECT_THROW(ops::attention(q, k2, v2, {}), ShapeError);
  ops::AttentionOptions bad;
  bad.sliding_window = 0;
  EXPECT_THROW(ops::attention(q, k2, k2, bad), ShapeError);
  bad = {};
  bad.q_offset = -1;
  EXPECT_THROW(ops::attention(q, k2, k2, bad), ShapeError);
  EXPECT_THROW(ops::attention(q.view({12, 8}), k2, k2, {}), ShapeError);
}
