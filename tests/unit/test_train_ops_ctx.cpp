// The context forms of the training ops (ops/train_ops.h, nn/lora.h) on the CPU: each gives the
// host reference function's bytes on the same inputs (the CPU branch is that function, so any
// argument wired wrongly shows here), and a bad shape is a one-line ShapeError naming the op and
// the tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/exec_context.h"
#include "nibble/error.h"
#include "nn/lora.h"
#include "ops/nn_ops.h"
#include "ops/train_ops.h"
#include "test_support.h"

using namespace nibble;

namespace {

ExecContext& ctx() {
  return ExecContext::current(Device::cpu());
}
Tensor zeros(const Shape& s) {
  return Tensor::zeros(s, DType::F32);
}
bool same_bytes(const Tensor& a, const std::vector<float>& b) {
  return a.numel() == int64_t(b.size()) && std::memcmp(a.data<float>(), b.data(), b.size() * 4) == 0;
}
std::vector<float> zero_vec(size_t n) {
  return std::vector<float>(n, 0.0f);
}
// The op throws a ShapeError of one line naming `op` and `what`.
template <class F>
void expect_shape_error(F&& f, const std::string& op, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << op << " accepted a bad " << what;
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(op), std::string::npos) << m;
    EXPECT_NE(m.find(what), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

TEST(TrainOpsCtx, CpuBranchIsTheHostReference) {
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int64_t M = 6, C = 40;
  const Tensor x = test::random_normal({M, C}, DType::F32, rng),
               dy = test::random_normal({M, C}, DType::F32, rng);
  const Tensor w = test::random_normal({C}, DType::F32, rng);
  {
    Tensor dx = zeros({M, C}), dw = zeros({C});
    ops::rms_norm_backward(ctx(), x, w, 1e-6f, true, dy, dx, dw);
    auto rdx = zero_vec(M * C), rdw = zero_vec(C);
    ops::rms_norm_backward(x.data<float>(), w.data<float>(), M, C, 1e-6f, 1.0f, dy.data<float>(), rdx.data(),
                           rdw.data());
    EXPECT_TRUE(same_bytes(dx, rdx));
    EXPECT_TRUE(same_bytes(dw, rdw));
  }
  {
    Tensor dg = zeros({M, C}), du = zeros({M, C});
    ops::gated_act_backward(ctx(), ops::Activation::GeluTanh, x, dy, dy, dg, du);
    auto rg = zero_vec(M * C), ru = zero_vec(M * C);
    ops::gated_act_backward(ops::Act::GeluTanh, x.data<float>(), dy.data<float>(), dy.data<float>(), M * C,
                            rg.data(), ru.data());
    EXPECT_TRUE(same_bytes(dg, rg));
    EXPECT_TRUE(same_bytes(du, ru));
  }
  {
    const int64_t T = 5, Hq = 4, Hkv = 2, D = 8;
    const Tensor q = test::random_normal({T, Hq, D}, DType::F32, rng),
                 k = test::random_normal({T, Hkv, D}, DType::F32, rng),
                 v = test::random_normal({T, Hkv, D}, DType::F32, rng),
                 g = test::random_normal({T, Hq, D}, DType::F32, rng);
    ops::AttentionOptions o;
    o.scale = 0.3f;
    o.sliding_window = 3;
    o.softcap = 5.0f;
    Tensor dq = zeros({T, Hq, D}), dk = zeros({T, Hkv, D}), dv = zeros({T, Hkv, D});
    ops::attention_backward(ctx(), q, k, v, o, g, dq, dk, dv);
    auto rq = zero_vec(T * Hq * D), rk = zero_vec(T * Hkv * D), rv = zero_vec(T * Hkv * D);
    ops::AttnBwdOptions ro;
    ro.scale = 0.3f;
    ro.sliding_window = 3;
    ro.softcap = 5.0f;
    ops::attention_backward(q.data<float>(), k.data<float>(), v.data<float>(), T, Hq, Hkv, D, D, ro,
                            g.data<float>(), rq.data(), rk.data(), rv.data());
    EXPECT_TRUE(same_bytes(dq, rq));
    EXPECT_TRUE(same_bytes(dk, rk));
    EXPECT_TRUE(same_bytes(dv, rv));
    // the forward's output, when given, is checked (the CPU computes the same without it)
    const Tensor fwd = zeros({T, Hq, D});
    ops::attention(ctx(), q, k, v, o, fwd);
    ops::attention_backward(ctx(), q, k, v, o, g, dq, dk, dv, fwd);
    EXPECT_TRUE(same_bytes(dq, rq));
    EXPECT_TRUE(same_bytes(dk, rk));
    expect_shape_error(
        [&] {
          ops::attention_backward(ctx(), q, k, v, o, g, dq, dk, dv, zeros({T, Hq, D + 1}));
        },
        "attention_backward", "out must be");
  }
  {
    // 16-bit k/v (a 16-bit KV cache): the reference on their exact values; mixed dtypes refused
    const int64_t T = 6, Hq = 2, Hkv = 1, D = 8;
    const Tensor q = test::random_normal({T, Hq, D}, DType::F32, rng),
                 g = test::random_normal({T, Hq, D}, DType::F32, rng);
    for (DType dt : {DType::BF16, DType::F16}) {
      const Tensor k = test::random_normal({T, Hkv, D}, dt, rng),
                   v = test::random_normal({T, Hkv, D}, dt, rng);
      ops::AttentionOptions o;
      o.scale = 0.4f;
      Tensor dq = zeros({T, Hq, D}), dk = zeros({T, Hkv, D}), dv = zeros({T, Hkv, D});
      ops::attention_backward(ctx(), q, k, v, o, g, dq, dk, dv);
      auto rq = zero_vec(T * Hq * D), rk = zero_vec(T * Hkv * D), rv = zero_vec(T * Hkv * D);
      ops::AttnBwdOptions ro;
      ro.scale = 0.4f;
      const Tensor kf = k.to(DType::F32), vf = v.to(DType::F32);
      ops::attention_backward(q.data<float>(), kf.data<float>(), vf.data<float>(), T, Hq, Hkv, D, D, ro,
                              g.data<float>(), rq.data(), rk.data(), rv.data());
      EXPECT_TRUE(same_bytes(dq, rq));
      EXPECT_TRUE(same_bytes(dk, rk));
      EXPECT_TRUE(same_bytes(dv, rv));
      expect_shape_error([&] { ops::attention_backward(ctx(), q, k, vf, o, g, dq, dk, dv); },
                         "attention_backward", "one dtype");
    }
  }
  {
    const int64_t V = 30;
    const Tensor W = test::random_normal({V, C}, DType::F32, rng);
    std::vector<int64_t> tv = {3, -100, 7, 29, 0, -100};
    const Tensor tg = Tensor::from_vector({M}, DType::I64, tv);
    Tensor dh = zeros({M, C});
    const ops::HeadLoss l = ops::cross_entropy_head_backward(ctx(), x, W, tg, 4.0f, 7, 0.25f, dh);
    auto rdh = zero_vec(M * C);
    int64_t n = 0;
    const double want = ops::cross_entropy_head_backward(x.data<float>(), M, C, W.data<float>(), V, tv.data(),
                                                         4.0f, 7, 0.25f, rdh.data(), &n);
    EXPECT_EQ(l.loss_sum, want);
    EXPECT_EQ(l.n_targets, 4);
    EXPECT_EQ(n, 4);
    EXPECT_TRUE(same_bytes(dh, rdh));
    // A 16-bit head (autocast): h rounded to its dtype, f32 logits, the softmax gradient G rounded
    // to its dtype before dh = G W; against that arithmetic in double, with and without G's
    // rounding. Where the f32 logits straddle a 16-bit rounding boundary of G the op and the
    // reference round apart (rare), so the op must be far closer to the rounded reference than to
    // the unrounded one rather than equal to it.
    const int64_t V16 = 512;
    Tensor Wb = test::random_normal({V16, C}, DType::F32, rng);
    for (int64_t i = 0; i < Wb.numel(); ++i) Wb.data<float>()[i] *= 0.2f;
    std::vector<int64_t> t16 = {5, -100, 511, 0, 77, 300};
    const Tensor tg16 = Tensor::from_vector({M}, DType::I64, t16);
    for (DType wd : {DType::BF16, DType::F16}) {
      SCOPED_TRACE(dtype_name(wd));
      const Tensor W16 = Wb.to(wd), Wr = W16.to(DType::F32), xr = x.to(wd).to(DType::F32);
      Tensor dh16 = zeros({M, C});
      const ops::HeadLoss l16 = ops::cross_entropy_head_backward(ctx(), x, W16, tg16, 0.0f, 100, 0.25f, dh16);
      double loss = 0;
      std::vector<double> refr(size_t(M * C), 0.0), refu(size_t(M * C), 0.0);
      for (int64_t t = 0; t < M; ++t) {
        const int64_t y = t16[size_t(t)];
        if (y == -100) continue;
        std::vector<double> z(static_cast<size_t>(V16));
        double mx = -1e300, sum = 0;
        for (int64_t v = 0; v < V16; ++v) {
          for (int64_t k = 0; k < C; ++k)
            z[size_t(v)] += double(xr.data<float>()[t * C + k]) * Wr.data<float>()[v * C + k];
          mx = std::max(mx, z[size_t(v)]);
        }
        for (double zv : z) sum += std::exp(zv - mx);
        const double lse = mx + std::log(sum);
        loss += lse - z[size_t(y)];
        for (int64_t v = 0; v < V16; ++v) {
          const double g = (std::exp(z[size_t(v)] - lse) - (v == y ? 1.0 : 0.0)) * 0.25,
                       gr = round_to_dtype(float(g), wd);
          for (int64_t k = 0; k < C; ++k) {
            refr[size_t(t * C + k)] += gr * Wr.data<float>()[v * C + k];
            refu[size_t(t * C + k)] += g * Wr.data<float>()[v * C + k];
          }
        }
      }
      EXPECT_EQ(l16.n_targets, 5);
      EXPECT_NEAR(l16.loss_sum, loss, 1e-5 * std::abs(loss));
      double er = 0, eu = 0, den = 0;
      for (int64_t i = 0; i < M * C; ++i) {
        er += std::pow(dh16.data<float>()[i] - refr[size_t(i)], 2);
        eu += std::pow(dh16.data<float>()[i] - refu[size_t(i)], 2);
        den += refr[size_t(i)] * refr[size_t(i)];
      }
      EXPECT_LT(std::sqrt(er / den), 1e-3);
      EXPECT_LT(std::sqrt(er), 0.25 * std::sqrt(eu)) << "G was not rounded to " << dtype_name(wd);
    }
  }
  {
    const int64_t r = 3, N = 11;
    nn::LoraWeights lw;
    lw.A = test::random_normal({r, C}, DType::F32, rng);
    lw.B = test::random_normal({N, r}, DType::F32, rng);
    lw.scale = 0.5f;
    const Tensor g = test::random_normal({M, N}, DType::F32, rng);
    Tensor y = zeros({M, N}), dA = zeros({r, C}), dB = zeros({N, r}), dx = zeros({M, C});
    nn::LoraCache cache;
    nn::lora_forward(ctx(), lw, x, 0.3f, 99, y, &cache);
    nn::lora_backward(ctx(), lw, x, g, cache, dA, dB, dx);
    auto ry = zero_vec(M * N), rA = zero_vec(r * C), rB = zero_vec(N * r), rx = zero_vec(M * C);
    nn::LoraSaved s;
    nn::lora_forward(x.data<float>(), M, C, lw.A.data<float>(), lw.B.data<float>(), r, N, 0.5f, 0.3f, 99,
                     ry.data(), &s);
    nn::lora_backward(g.data<float>(), x.data<float>(), M, C, lw.A.data<float>(), lw.B.data<float>(), r, N,
                      0.5f, s, rA.data(), rB.data(), rx.data());
    EXPECT_TRUE(same_bytes(y, ry));
    EXPECT_TRUE(same_bytes(dA, rA));
    EXPECT_TRUE(same_bytes(dB, rB));
    EXPECT_TRUE(same_bytes(dx, rx));
  }
}

TEST(TrainOpsCtx, BadShapesAreOneLineShapeErrors) {
  const Tensor x = zeros({4, 8}), w = zeros({8}), dy = zeros({4, 8}), dx = zeros({4, 8});
  expect_shape_error([&] { ops::rms_norm_backward(ctx(), x, zeros({7}), 1e-6f, false, dy, dx, Tensor()); },
                     "rms_norm_backward", "weight");
  expect_shape_error(
      [&] {
        ops::layer_norm_backward(ctx(), x, w, 1e-5f, dy, zeros({4, 9}), Tensor(), Tensor());
      },
      "layer_norm_backward", "dx");
  expect_shape_error(
      [&] {
        ops::act_backward(ctx(), ops::Activation::SiLU, x, zeros({8, 4}), dx);
      },
      "act_backward", "dy");
  expect_shape_error(
      [&] {
        ops::rope_backward_(ctx(), zeros({4, 2, 8}), zeros({4, 3}), zeros({4, 4}), 8);
      },
      "rope_backward_", "cos");
  expect_shape_error(
      [&] {
        ops::attention_backward(ctx(), zeros({4, 3, 8}), zeros({4, 2, 8}), zeros({4, 2, 8}),
                                ops::AttentionOptions(), zeros({4, 3, 8}), zeros({4, 3, 8}), zeros({4, 2, 8}),
                                zeros({4, 2, 8}));
      },
      "attention_backward", "multiple");
  expect_shape_error(
      [&] {
        ops::cross_entropy_head_backward(ctx(), x, zeros({10, 8}), Tensor::zeros({3}, DType::I64), 0.0f, 4,
                                         1.0f, Tensor());
      },
      "cross_entropy_head_backward", "targets");
  const auto i64 = [](std::vector<int64_t> v) {
    return Tensor::from_vector({int64_t(v.size())}, DType::I64, v);
  };
  expect_shape_error(
      [&] {
        ops::sum_squares(ctx(), zeros({10}), i64({4, 3}), Tensor::zeros({2}, DType::F64));
      },
      "sum_squares", "ends[1]");
  expect_shape_error(
      [&] {
        ops::sum_squares(ctx(), zeros({10}), i64({4, 11}), Tensor::zeros({2}, DType::F64));
      },
      "sum_squares", "ends[1]");
  expect_shape_error(
      [&] {
        ops::sum_squares(ctx(), zeros({10}), i64({4, 10}), Tensor::zeros({3}, DType::F64));
      },
      "sum_squares", "out");
  {
    Tensor out = Tensor::zeros({3}, DType::F64), v = zeros({10});
    for (int i = 0; i < 10; ++i) v.data<float>()[i] = float(i);
    ops::sum_squares(ctx(), v, i64({2, 2, 10}), out);
    EXPECT_EQ(out.data<double>()[0], 1.0);
    EXPECT_EQ(out.data<double>()[1], 0.0);
    EXPECT_EQ(out.data<double>()[2], 284.0);  // 4 + 9 + ... + 81
  }
  nn::LoraWeights lw;
  lw.A = zeros({2, 8});
  lw.B = zeros({5, 2});
  expect_shape_error(
      [&] {
        nn::lora_forward(ctx(), lw, x, 0.0f, 0, zeros({4, 6}), nullptr);
      },
      "lora_forward", "out");
}

}  // namespace
