// Backward of attention (causal, GQA, sliding window, softcap, alibi), rope (full and partial),
// layer norm and softcap: against finite differences of a double-precision forward, and that
// double forward against nibble's own forward op (so the derivative is of the function nibble
// runs), on random inputs of odd shapes (seed printed).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>

#include "nibble/tensor.h"
#include "ops/nn_ops.h"
#include "ops/train_ops.h"

namespace nibble::ops {
namespace {

std::vector<float> randv(std::mt19937& g, size_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

unsigned fresh_seed() {
  const unsigned s = std::random_device{}();
  std::printf("seed %u\n", s);
  return s;
}

std::vector<double> numeric_grad(std::vector<float>& v, const std::function<double()>& f) {
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const float o = v[i];
    const float h = 1e-2f * std::max(1.0f, std::abs(o));
    v[i] = o + h;
    const double lp = f();
    v[i] = o - h;
    const double lm = f();
    v[i] = o;
    g[i] = (lp - lm) / (double(o + h) - double(o - h));
  }
  return g;
}

void expect_grad(const std::vector<float>& got, const std::vector<double>& want, double tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  double mx = 0;
  for (double w : want) mx = std::max(mx, std::abs(w));
  ASSERT_GT(mx, 0.0) << what;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol * mx) << what << " [" << i << "]";
}

// Double forward of causal attention; out [T, Hq, Dv].
std::vector<double> attn_ref(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                             const AttnBwdOptions& o) {
  std::vector<double> out(size_t(T * Hq * D), 0.0);
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t g = h / (Hq / Hkv);
    for (int64_t i = 0; i < T; ++i) {
      std::vector<double> s(size_t(T), -INFINITY);
      double mx = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        if (o.sliding_window > 0 && i - j >= o.sliding_window) continue;
        double d = 0;
        for (int64_t e = 0; e < D; ++e)
          d += double(q[size_t((i * Hq + h) * D + e)]) * k[size_t((j * Hkv + g) * D + e)];
        d *= o.scale;
        if (o.softcap > 0) d = o.softcap * std::tanh(d / o.softcap);
        if (o.alibi_slopes) d += double(o.alibi_slopes[h]) * double(j);
        s[size_t(j)] = d;
        mx = std::max(mx, d);
      }
      double sum = 0;
      for (auto& x : s) sum += (x = std::isinf(x) ? 0.0 : std::exp(x - mx));
      for (int64_t j = 0; j <= i; ++j)
        for (int64_t e = 0; e < D; ++e)
          out[size_t((i * Hq + h) * D + e)] += s[size_t(j)] / sum * v[size_t((j * Hkv + g) * D + e)];
    }
  }
  return out;
}

TEST(TrainAttention, BackwardMatchesFiniteDifferences) {
  std::mt19937 g(fresh_seed());
  const int64_t T = 7, Hq = 4, Hkv = 2, D = 5;
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  struct Case {
    const char* name;
    int64_t window;
    float softcap;
    bool alibi;
  };
  for (const Case c : {Case{"plain", 0, 0.0f, false}, Case{"sliding", 3, 0.0f, false},
                       Case{"softcap", 0, 1.5f, false}, Case{"alibi+sliding", 4, 0.0f, true}}) {
    AttnBwdOptions o;
    o.scale = 1.0f / std::sqrt(float(D));
    o.sliding_window = c.window;
    o.softcap = c.softcap;
    o.alibi_slopes = c.alibi ? slopes.data() : nullptr;
    auto q = randv(g, size_t(T * Hq * D)), k = randv(g, size_t(T * Hkv * D)),
         v = randv(g, size_t(T * Hkv * D));
    auto R = randv(g, size_t(T * Hq * D));
    // nibble's forward op computes the function we differentiate
    AttentionOptions ao;
    ao.scale = o.scale;
    if (c.window) ao.sliding_window = c.window;
    if (c.softcap > 0) ao.softcap = c.softcap;
    if (c.alibi) ao.alibi_slopes = Tensor::from_vector({Hq}, DType::F32, slopes);
    Tensor out = attention(Tensor::from_vector({T, Hq, D}, DType::F32, q),
                           Tensor::from_vector({T, Hkv, D}, DType::F32, k),
                           Tensor::from_vector({T, Hkv, D}, DType::F32, v), ao);
    const auto ref = attn_ref(q, k, v, T, Hq, Hkv, D, o);
    for (size_t i = 0; i < ref.size(); ++i)
      ASSERT_NEAR(out.data<float>()[i], ref[i], 1e-5) << c.name << " out " << i;
    auto f = [&] {
      const auto y = attn_ref(q, k, v, T, Hq, Hkv, D, o);
      double L = 0;
      for (size_t i = 0; i < y.size(); ++i) L += y[i] * R[i];
      return L;
    };
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
    attention_backward(q.data(), k.data(), v.data(), T, Hq, Hkv, D, D, o, R.data(), dq.data(), dk.data(),
                       dv.data());
    expect_grad(dq, numeric_grad(q, f), 2e-3, std::string(c.name) + " dq");
    expect_grad(dk, numeric_grad(k, f), 2e-3, std::string(c.name) + " dk");
    expect_grad(dv, numeric_grad(v, f), 2e-3, std::string(c.name) + " dv");
  }
}

TEST(TrainAttention, RopeBackwardFullAndPartial) {
  std::mt19937 g(fresh_seed());
  const int64_t T = 5, H = 3, D = 8;
  for (int64_t rot : {int64_t(8), int64_t(4)}) {
    const int64_t half = rot / 2;
    auto x = randv(g, size_t(T * H * D)), R = randv(g, size_t(T * H * D)),
         ang = randv(g, size_t(T * half), 2.0f);
    std::vector<float> cs(ang.size()), sn(ang.size());
    for (size_t i = 0; i < ang.size(); ++i) cs[i] = std::cos(ang[i]) * 1.3f, sn[i] = std::sin(ang[i]) * 1.3f;
    auto fwd = [&](const std::vector<float>& xin) {
      std::vector<double> y(xin.begin(), xin.end());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < half; ++d) {
            const size_t b = size_t((t * H + h) * D);
            const double a = xin[b + size_t(d)], bb = xin[b + size_t(d + half)];
            const double c = cs[size_t(t * half + d)], s = sn[size_t(t * half + d)];
            y[b + size_t(d)] = a * c - bb * s;
            y[b + size_t(d + half)] = bb * c + a * s;
          }
      return y;
    };
    // against nibble's forward
    Tensor xt = Tensor::from_vector({T, H, D}, DType::F32, x);
    apply_rope_(xt, Tensor::from_vector({T, half}, DType::F32, cs),
                Tensor::from_vector({T, half}, DType::F32, sn), rot);
    const auto ref = fwd(x);
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(xt.data<float>()[i], ref[i], 1e-5);
    auto f = [&] {
      const auto y = fwd(x);
      double L = 0;
      for (size_t i = 0; i < y.size(); ++i) L += y[i] * R[i];
      return L;
    };
    std::vector<float> dx = R;
    rope_backward_(dx.data(), T, H, D, cs.data(), sn.data(), rot);
    expect_grad(dx, numeric_grad(x, f), 2e-3, "rope dx rot " + std::to_string(rot));
  }
}

TEST(TrainAttention, LayerNormAndSoftcapBackward) {
  std::mt19937 g(fresh_seed());
  const int64_t rows = 3, n = 11;
  auto x = randv(g, size_t(rows * n), 2.0f), w = randv(g, size_t(n)), b = randv(g, size_t(n)),
       R = randv(g, size_t(rows * n));
  auto f = [&] {
    double L = 0;
    for (int64_t r = 0; r < rows; ++r) {
      double mean = 0, var = 0;
      for (int64_t k = 0; k < n; ++k) mean += x[size_t(r * n + k)];
      mean /= double(n);
      for (int64_t k = 0; k < n; ++k) var += std::pow(x[size_t(r * n + k)] - mean, 2);
      const double rstd = 1.0 / std::sqrt(var / double(n) + 1e-5);
      for (int64_t k = 0; k < n; ++k)
        L += ((x[size_t(r * n + k)] - mean) * rstd * w[size_t(k)] + b[size_t(k)]) * R[size_t(r * n + k)];
    }
    return L;
  };
  std::vector<float> dx(x.size()), dw(w.size(), 0.0f), db(b.size(), 0.0f);
  layer_norm_backward(x.data(), w.data(), rows, n, 1e-5f, R.data(), dx.data(), dw.data(), db.data());
  expect_grad(dx, numeric_grad(x, f), 2e-3, "ln dx");
  expect_grad(dw, numeric_grad(w, f), 2e-3, "ln dw");
  expect_grad(db, numeric_grad(b, f), 2e-3, "ln db");

  const float cap = 2.5f;
  auto z = randv(g, 9, 3.0f), Rz = randv(g, 9);
  std::vector<float> y(z.size()), dz = Rz;
  for (size_t i = 0; i < z.size(); ++i) y[i] = cap * std::tanh(z[i] / cap);
  softcap_backward_(y.data(), cap, int64_t(z.size()), dz.data());
  auto fz = [&] {
    double L = 0;
    for (size_t i = 0; i < z.size(); ++i) L += cap * std::tanh(double(z[i]) / cap) * Rz[i];
    return L;
  };
  expect_grad(dz, numeric_grad(z, fz), 2e-3, "softcap");
}

TEST(TrainAttention, ReluBackward) {
  std::vector<float> x = {-1.0f, 0.5f, 2.0f, -0.25f}, dy = {1, 2, 3, 4}, dx(4);
  act_backward(Act::Relu, x.data(), dy.data(), 4, dx.data());
  EXPECT_EQ(dx, (std::vector<float>{0, 2, 3, 0}));
  EXPECT_EQ(act_value(Act::Relu, -3.0f), 0.0f);
  EXPECT_EQ(act_value(Act::Relu, 3.0f), 3.0f);
}

}  // namespace
}  // namespace nibble::ops
