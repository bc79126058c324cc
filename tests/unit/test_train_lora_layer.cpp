// The LoRA term and its backward against a double-precision reference and finite differences,
// and dX through the frozen base (fp32, NF4 + double quant, FP4, int8) against the whole
// dequantized weight, on random inputs of odd shapes (seed printed).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "nibble/quant.h"
#include "nn/lora.h"

namespace nibble::nn {
namespace {

std::vector<float> randv(std::mt19937& g, size_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct Shapes {
  int64_t M, in, out, r;
};

// Double reference: y = s B (A xd), L = sum(y * R); gradients of L.
struct Ref {
  std::vector<double> y, dA, dB, dx;
};
Ref reference(const Shapes& s, const std::vector<float>& x, const std::vector<float>& A,
              const std::vector<float>& B, const std::vector<double>& keep, double scale,
              const std::vector<float>& R) {
  Ref r;
  std::vector<double> xd(x.size()), h(size_t(s.M * s.r), 0.0), dh(size_t(s.M * s.r), 0.0);
  for (size_t i = 0; i < x.size(); ++i) xd[i] = double(x[i]) * keep[i];
  for (int64_t m = 0; m < s.M; ++m)
    for (int64_t j = 0; j < s.r; ++j)
      for (int64_t k = 0; k < s.in; ++k)
        h[size_t(m * s.r + j)] += double(A[size_t(j * s.in + k)]) * xd[size_t(m * s.in + k)];
  r.y.assign(size_t(s.M * s.out), 0.0);
  r.dB.assign(B.size(), 0.0);
  r.dA.assign(A.size(), 0.0);
  r.dx.assign(x.size(), 0.0);
  for (int64_t m = 0; m < s.M; ++m)
    for (int64_t n = 0; n < s.out; ++n)
      for (int64_t j = 0; j < s.r; ++j) {
        r.y[size_t(m * s.out + n)] += scale * double(B[size_t(n * s.r + j)]) * h[size_t(m * s.r + j)];
        r.dB[size_t(n * s.r + j)] += scale * double(R[size_t(m * s.out + n)]) * h[size_t(m * s.r + j)];
        dh[size_t(m * s.r + j)] += scale * double(R[size_t(m * s.out + n)]) * double(B[size_t(n * s.r + j)]);
      }
  for (int64_t m = 0; m < s.M; ++m)
    for (int64_t j = 0; j < s.r; ++j)
      for (int64_t k = 0; k < s.in; ++k) {
        r.dA[size_t(j * s.in + k)] += dh[size_t(m * s.r + j)] * xd[size_t(m * s.in + k)];
        r.dx[size_t(m * s.in + k)] +=
            dh[size_t(m * s.r + j)] * double(A[size_t(j * s.in + k)]) * keep[size_t(m * s.in + k)];
      }
  return r;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double rtol,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double mx = 0;
  for (double w : want) mx = std::max(mx, std::abs(w));
  ASSERT_GT(mx, 0.0) << what;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], rtol * mx) << what << " [" << i << "]";
}

TEST(TrainLoraLayer, ForwardBackwardMatchDoubleReference) {
  const unsigned seed = std::random_device{}();
  std::mt19937 g(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::printf("seed %u\n", seed);
  for (Shapes s : {Shapes{5, 37, 29, 4}, Shapes{1, 64, 96, 8}, Shapes{13, 19, 7, 3}})
    for (float p : {0.0f, 0.3f}) {
      auto x = randv(g, size_t(s.M * s.in)), A = randv(g, size_t(s.r * s.in), 0.2f),
           B = randv(g, size_t(s.out * s.r), 0.2f), R = randv(g, size_t(s.M * s.out));
      const float scale = 2.0f;
      std::vector<float> y(size_t(s.M * s.out), 0.0f), dA(A.size(), 0.0f), dB(B.size(), 0.0f),
          dx(x.size(), 0.0f);
      LoraSaved sv;
      lora_forward(x.data(), s.M, s.in, A.data(), B.data(), s.r, s.out, scale, p, 77, y.data(), &sv);
      std::vector<double> keep(x.size(), 1.0);
      if (p > 0) {
        ASSERT_EQ(sv.mask.size(), x.size());
        size_t dropped = 0;
        for (size_t i = 0; i < x.size(); ++i)
          keep[i] = sv.mask[i] ? 1.0 / (1.0 - p) : 0.0, dropped += !sv.mask[i];
        EXPECT_GT(dropped, 0u);
        EXPECT_LT(dropped, x.size());
      }
      lora_backward(R.data(), x.data(), s.M, s.in, A.data(), B.data(), s.r, s.out, scale, sv, dA.data(),
                    dB.data(), dx.data());
      Ref ref = reference(s, x, A, B, keep, scale, R);
      expect_close(y, ref.y, 1e-5, "y");
      expect_close(dA, ref.dA, 1e-5, "dA");
      expect_close(dB, ref.dB, 1e-5, "dB");
      expect_close(dx, ref.dx, 1e-5, "dx");
    }
}

TEST(TrainLoraLayer, FiniteDifferences) {
  const unsigned seed = std::random_device{}();
  std::mt19937 g(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::printf("seed %u\n", seed);
  const Shapes s{3, 11, 9, 2};
  auto x = randv(g, 33), A = randv(g, 22, 0.5f), B = randv(g, 18, 0.5f), R = randv(g, 27);
  const float scale = 0.75f;
  auto loss = [&](const std::vector<float>& xx, const std::vector<float>& AA, const std::vector<float>& BB) {
    std::vector<float> y(27, 0.0f);
    lora_forward(xx.data(), s.M, s.in, AA.data(), BB.data(), s.r, s.out, scale, 0.0f, 0, y.data(), nullptr);
    double L = 0;
    for (size_t i = 0; i < y.size(); ++i) L += double(y[i]) * R[i];
    return L;
  };
  std::vector<float> y(27, 0.0f), dA(22, 0.0f), dB(18, 0.0f), dx(33, 0.0f);
  LoraSaved sv;
  lora_forward(x.data(), s.M, s.in, A.data(), B.data(), s.r, s.out, scale, 0.0f, 0, y.data(), &sv);
  lora_backward(R.data(), x.data(), s.M, s.in, A.data(), B.data(), s.r, s.out, scale, sv, dA.data(),
                dB.data(), dx.data());
  const float h = 1e-2f;
  auto check = [&](std::vector<float>& v, const std::vector<float>& grad, const char* what) {
    for (size_t i = 0; i < v.size(); ++i) {
      const float o = v[i];
      v[i] = o + h;
      const double lp = loss(x, A, B);
      v[i] = o - h;
      const double lm = loss(x, A, B);
      v[i] = o;
      ASSERT_NEAR(grad[i], (lp - lm) / (2 * double(h)), 2e-3 * (1 + std::abs(grad[i])))
          << what << " [" << i << "]";
    }
  };
  check(x, dx, "dx");
  check(A, dA, "dA");
  check(B, dB, "dB");
}

TEST(TrainLoraLayer, BaseDxThroughEveryFormat) {
  const unsigned seed = std::random_device{}();
  std::mt19937 g(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::printf("seed %u\n", seed);
  const int64_t M = 3, in = 96, out = 71;  // out not a multiple of the 32-row tile
  auto wv = randv(g, size_t(out * in), 0.1f), dy = randv(g, size_t(M * out));
  const Tensor w = Tensor::from_vector({out, in}, DType::F32, wv);
  std::vector<std::pair<std::string, std::pair<Linear, Tensor>>> cases;  // linear, its W as f32
  cases.push_back({"fp32", {Linear::fp(w, Tensor()), w}});
  for (DType qt : {DType::NF4, DType::FP4}) {
    Quantized4 q = quantize_4bit(w, qt, 64, qt == DType::NF4);
    cases.push_back(
        {dtype_name(qt),
         {Linear::four_bit(q.packed, q.state, Tensor(), DType::F32), dequantize_4bit(q.packed, q.state)}});
  }
  Int8Rowwise q8 = int8_vectorwise_quant(w.to(DType::F16), 0.0f);
  cases.push_back(
      {"int8", {Linear::int8(q8.CA, q8.SCA, Tensor(), 6.0f), int8_vectorwise_dequant(q8.CA, q8.SCA)}});
  for (const auto& [name, lw] : cases) {
    const auto& [lin, wf] = lw;
    std::vector<float> dx(size_t(M * in), 0.0f);
    linear_backward_dx(lin, dy.data(), M, dx.data());
    std::vector<double> want(size_t(M * in), 0.0);
    const float* W = wf.data<float>();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < out; ++n)
        for (int64_t k = 0; k < in; ++k)
          want[size_t(m * in + k)] += double(dy[size_t(m * out + n)]) * W[n * in + k];
    expect_close(dx, want, 1e-5, name.c_str());
  }
}

}  // namespace
}  // namespace nibble::nn
