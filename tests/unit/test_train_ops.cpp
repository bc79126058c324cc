// Backward ops against a double-precision reference of the forward (central finite differences
// of the double forward) and, for the loss, a whole-logits double implementation, on random
// inputs of odd shapes (seed printed).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>

#include "nibble/error.h"
#include "nibble/thread_pool.h"
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

// Central differences of a double-valued loss of v (in double, h = 1e-3 on f32 inputs).
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
                 const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double mx = 0;
  for (double w : want) mx = std::max(mx, std::abs(w));
  ASSERT_GT(mx, 0.0) << what;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol * mx) << what << " [" << i << "]";
}

// Double forward of the shifted mean cross-entropy with the whole [T, V] logits.
double ce_ref(const std::vector<float>& h, int64_t T, int64_t H, const std::vector<float>& W, int64_t V,
              const std::vector<int64_t>& labels, double cap) {
  double loss = 0;
  int64_t n = 0;
  for (int64_t t = 0; t + 1 < T; ++t) {
    if (labels[size_t(t + 1)] == -100) continue;
    std::vector<double> z(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) {
      double a = 0;
      for (int64_t k = 0; k < H; ++k) a += double(h[size_t(t * H + k)]) * W[size_t(v * H + k)];
      z[size_t(v)] = cap > 0 ? cap * std::tanh(a / cap) : a;
    }
    double mx = *std::max_element(z.begin(), z.end()), s = 0;
    for (double x : z) s += std::exp(x - mx);
    loss += mx + std::log(s) - z[size_t(labels[size_t(t + 1)])];
    ++n;
  }
  return loss / double(n);
}

TEST(TrainOps, CausalLmLossChunkedMatchesReference) {
  std::mt19937 g(fresh_seed());
  const int64_t T = 7, H = 13, V = 101;
  for (float cap : {0.0f, 3.0f})
    for (int64_t chunk : {1, 16, 101, 4096}) {
      auto h = randv(g, size_t(T * H)), W = randv(g, size_t(V * H), 0.5f);
      std::vector<int64_t> labels(static_cast<size_t>(T));
      for (auto& l : labels) l = int64_t(g() % V);
      labels[2] = -100;  // ignored target
      std::vector<float> dh(size_t(T * H));
      const double loss =
          causal_lm_loss_backward(h.data(), T, H, W.data(), V, labels.data(), cap, chunk, dh.data());
      EXPECT_NEAR(loss, ce_ref(h, T, H, W, V, labels, cap), 1e-5 * loss) << "chunk " << chunk;
      auto want = numeric_grad(h, [&] { return ce_ref(h, T, H, W, V, labels, cap); });
      expect_grad(dh, want, 2e-3, "dh");
      for (int64_t k = 0; k < H; ++k)
        EXPECT_EQ(dh[size_t((T - 1) * H + k)], 0.0f);  // last position: no target
    }
  std::vector<int64_t> all_ignored(3, -100);
  std::vector<float> h(6), W(10), dh(6);
  EXPECT_TRUE(
      std::isnan(causal_lm_loss_backward(h.data(), 3, 2, W.data(), 5, all_ignored.data(), 0, 4, dh.data())));
  std::vector<int64_t> bad = {0, 9, 0};
  EXPECT_THROW(causal_lm_loss_backward(h.data(), 3, 2, W.data(), 5, bad.data(), 0, 4, dh.data()), ShapeError);
}

// Row blocks of 64 run in parallel: several blocks (the last one partial), several vocabulary
// chunks and ignored targets give the same loss and dh bit for bit with 1 and 2 threads, and
// the loss agrees with the whole-logits double reference.
TEST(TrainOps, CrossEntropyHeadRowBlocksDoNotDependOnThreads) {
  std::mt19937 g(fresh_seed());
  const int64_t T = 203, H = 24, V = 97, chunk = 40;
  auto h = randv(g, size_t(T * H)), W = randv(g, size_t(V * H), 0.5f);
  std::vector<int64_t> labels(static_cast<size_t>(T));
  for (auto& l : labels) l = g() % 5 == 0 ? -100 : int64_t(g() % V);
  const int before = num_threads();
  std::vector<float> dh1(size_t(T * H)), dh2(size_t(T * H));
  set_num_threads(1);
  const double l1 = causal_lm_loss_backward(h.data(), T, H, W.data(), V, labels.data(), 2.5f, chunk, dh1.data());
  set_num_threads(2);
  const double l2 = causal_lm_loss_backward(h.data(), T, H, W.data(), V, labels.data(), 2.5f, chunk, dh2.data());
  set_num_threads(before);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(dh1, dh2);
  EXPECT_NEAR(l1, ce_ref(h, T, H, W, V, labels, 2.5), 1e-5 * l1);
  double mx = 0;
  for (float v : dh1) mx = std::max(mx, double(std::abs(v)));
  ASSERT_GT(mx, 0.0);
  for (int s = 0; s < 24; ++s) {  // dh against central differences of the reference at sampled entries
    const size_t i = g() % h.size();
    const float o = h[i], e = 1e-2f * std::max(1.0f, std::abs(o));
    h[i] = o + e;
    const double lp = ce_ref(h, T, H, W, V, labels, 2.5);
    h[i] = o - e;
    const double lm = ce_ref(h, T, H, W, V, labels, 2.5);
    h[i] = o;
    EXPECT_NEAR(dh1[i], (lp - lm) / (double(o + e) - double(o - e)), 2e-3 * mx) << "dh[" << i << "]";
  }
}

TEST(TrainOps, RmsNormBackward) {
  std::mt19937 g(fresh_seed());
  const int64_t rows = 3, n = 17;
  for (float offset : {0.0f, 1.0f}) {
    auto x = randv(g, size_t(rows * n)), w = randv(g, size_t(n)), R = randv(g, size_t(rows * n));
    auto f = [&] {
      double L = 0;
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t k = 0; k < n; ++k) ss += double(x[size_t(r * n + k)]) * x[size_t(r * n + k)];
        const double inv = 1.0 / std::sqrt(ss / double(n) + 1e-6);
        for (int64_t k = 0; k < n; ++k)
          L += double(x[size_t(r * n + k)]) * inv * (offset + double(w[size_t(k)])) * R[size_t(r * n + k)];
      }
      return L;
    };
    std::vector<float> dx(x.size()), dw(w.size(), 0.0f);
    rms_norm_backward(x.data(), w.data(), rows, n, 1e-6f, offset, R.data(), dx.data(), dw.data());
    expect_grad(dx, numeric_grad(x, f), 2e-3, "dx");
    expect_grad(dw, numeric_grad(w, f), 2e-3, "dw");
  }
}

TEST(TrainOps, ActivationsAndGated) {
  std::mt19937 g(fresh_seed());
  const int64_t n = 41;
  for (Act a : {Act::Silu, Act::GeluErf, Act::GeluTanh}) {
    auto x = randv(g, size_t(n), 2.0f), up = randv(g, size_t(n)), R = randv(g, size_t(n));
    auto fd = [&](double xv) {
      switch (a) {
        case Act::Silu:
          return xv / (1 + std::exp(-xv));
        case Act::GeluErf:
          return 0.5 * xv * (1 + std::erf(xv / std::sqrt(2.0)));
        case Act::GeluTanh:
          return 0.5 * xv * (1 + std::tanh(std::sqrt(2 / M_PI) * (xv + 0.044715 * xv * xv * xv)));
        case Act::Relu:
          return xv > 0 ? xv : 0.0;
      }
      return 0.0;
    };
    auto f = [&] {
      double L = 0;
      for (int64_t i = 0; i < n; ++i) L += fd(x[size_t(i)]) * double(up[size_t(i)]) * R[size_t(i)];
      return L;
    };
    std::vector<float> dx(static_cast<size_t>(n)), dg(static_cast<size_t>(n)), du(static_cast<size_t>(n));
    std::vector<float> Rup(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) Rup[size_t(i)] = R[size_t(i)] * up[size_t(i)];
    act_backward(a, x.data(), Rup.data(), n, dx.data());
    gated_act_backward(a, x.data(), up.data(), R.data(), n, dg.data(), du.data());
    const auto want_x = numeric_grad(x, f);
    expect_grad(dx, want_x, 2e-3, "act dx");
    expect_grad(dg, want_x, 2e-3, "gated dgate");
    expect_grad(du, numeric_grad(up, f), 2e-3, "gated dup");
  }
}

TEST(TrainOps, EmbeddingScatterAdd) {
  std::mt19937 g(fresh_seed());
  const int64_t T = 6, H = 5, V = 4;
  std::vector<int64_t> ids = {1, 3, 1, 0, 3, 1};
  auto dy = randv(g, size_t(T * H));
  std::vector<float> dW(size_t(V * H), 0.0f);
  embedding_backward(ids.data(), T, dy.data(), H, V, dW.data());
  std::vector<double> want(size_t(V * H), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < H; ++k) want[size_t(ids[size_t(t)] * H + k)] += dy[size_t(t * H + k)];
  expect_grad(dW, want, 1e-6, "dW");
  for (int64_t k = 0; k < H; ++k) EXPECT_EQ(dW[size_t(2 * H + k)], 0.0f);  // id 2 unused
  ids[0] = 4;
  EXPECT_THROW(embedding_backward(ids.data(), T, dy.data(), H, V, dW.data()), ShapeError);
}

}  // namespace
}  // namespace nibble::ops
