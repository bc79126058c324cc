// The training backward ops on CUDA (ops/train_ops.h and nn/lora.h, through ops::dispatch into
// backends/cuda/train_*.cu) against the same ops on the CPU (the host reference) on fresh random
// inputs (seed printed; NIBBLE_TEST_SEED repeats a run). Errors are measured relative to the
// largest |CPU value| of each output. Tolerances:
//   1e-5  elementwise ops and the norms: the same f32 formulas, only libm ulps and the norms'
//         row sums (f32 on the GPU, double on the host) differ, so errors are a few f32 ulps.
//   1e-4  GEMM-based ops (LoRA, the frozen base's dX, the loss's dh) and attention: sums of up to
//         a few hundred products in another order (cuBLAS; atomicAdd into dk/dv), about
//         sqrt(K) * 6e-8 ~ 1e-6 relative, with two orders of margin. A wrong index, mask,
//         scale or transposition gives errors of order 1.
// Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "backends/cuda/train_cuda.h"
#include "core/exec_context.h"
#include "nibble/quant.h"
#include "nibble/tensor.h"
#include "nn/linear.h"
#include "nn/lora.h"
#include "ops/nn_ops.h"
#include "ops/train_ops.h"
#include "test_support.h"

using namespace nibble;

#ifdef NIBBLE_WITH_CUDA
namespace {

constexpr double kElementwiseTol = 1e-5;
constexpr double kGemmTol = 1e-4;

const Device kGpu = Device::cuda(0);

ExecContext& cpu_ctx() {
  return ExecContext::current(Device::cpu());
}
ExecContext& gpu_ctx() {
  return ExecContext::current(kGpu);
}
Tensor on_gpu(const Tensor& t) {
  return t.defined() ? t.to(kGpu) : t;
}
// The device result on the host, after the context's stream has finished.
Tensor on_host(const Tensor& t) {
  gpu_ctx().synchronize();
  return t.to(Device::cpu());
}
Tensor zeros(const Shape& s, Device d = Device::cpu()) {
  return Tensor::zeros(s, DType::F32, d);
}

// max |got - want| / max |want| (want on the host, got on either device).
double rel_err(const Tensor& got_any, const Tensor& want) {
  const Tensor got = got_any.device().is_cpu() ? got_any : on_host(got_any);
  EXPECT_EQ(got.shape(), want.shape());
  double num = 0, den = 1e-30;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double w = want.data<float>()[i], g = got.data<float>()[i];
    if (!std::isfinite(g)) return INFINITY;
    num = std::max(num, std::abs(g - w));
    den = std::max(den, std::abs(w));
  }
  return num / den;
}

struct Seeded {
  uint64_t seed = test::fresh_seed();
  std::mt19937_64 rng{seed};
  Tensor randn(const Shape& s, float scale = 1.0f, DType dt = DType::F32) {
    return test::random_normal(s, dt, rng, scale);
  }
};
#define SEEDED(name) \
  Seeded name;       \
  SCOPED_TRACE("seed " + std::to_string(name.seed))

TEST(TrainCuda, NormBackward) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  for (DType wdt : {DType::F32, DType::BF16}) {
    for (int64_t C : {7, 256, 1031}) {
      const int64_t M = 5;
      const Tensor x = r.randn({M, C}), dy = r.randn({M, C}), w = r.randn({C}, 0.5f, wdt);
      for (bool unit : {false, true}) {
        Tensor dx = zeros({M, C}), dw = zeros({C}), gdx = zeros({M, C}, kGpu), gdw = zeros({C}, kGpu);
        ops::rms_norm_backward(cpu_ctx(), x, w, 1e-6f, unit, dy, dx, dw);
        ops::rms_norm_backward(gpu_ctx(), on_gpu(x), on_gpu(w), 1e-6f, unit, on_gpu(dy), gdx, gdw);
        EXPECT_LT(rel_err(gdx, dx), kElementwiseTol) << "rms dx C=" << C;
        EXPECT_LT(rel_err(gdw, dw), kElementwiseTol) << "rms dw C=" << C;
      }
      Tensor dx = zeros({M, C}), dw = zeros({C}), db = zeros({C});
      Tensor gdx = zeros({M, C}, kGpu), gdw = zeros({C}, kGpu), gdb = zeros({C}, kGpu);
      ops::layer_norm_backward(cpu_ctx(), x, w, 1e-5f, dy, dx, dw, db);
      ops::layer_norm_backward(gpu_ctx(), on_gpu(x), on_gpu(w), 1e-5f, on_gpu(dy), gdx, gdw, gdb);
      EXPECT_LT(rel_err(gdx, dx), kElementwiseTol) << "layer dx C=" << C;
      EXPECT_LT(rel_err(gdw, dw), kElementwiseTol) << "layer dw C=" << C;
      EXPECT_LT(rel_err(gdb, db), kElementwiseTol) << "layer db C=" << C;
    }
  }
}

TEST(TrainCuda, ActivationsSoftcapRope) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  const Shape s{9, 333};
  const Tensor x = r.randn(s, 2.0f), u = r.randn(s), dy = r.randn(s);
  for (ops::Activation a :
       {ops::Activation::SiLU, ops::Activation::GeluErf, ops::Activation::GeluTanh, ops::Activation::ReLU}) {
    Tensor dx = zeros(s), gdx = zeros(s, kGpu);
    ops::act_backward(cpu_ctx(), a, x, dy, dx);
    ops::act_backward(gpu_ctx(), a, on_gpu(x), on_gpu(dy), gdx);
    EXPECT_LT(rel_err(gdx, dx), kElementwiseTol) << "act " << int(a);
    Tensor dg = zeros(s), du = zeros(s), gdg = zeros(s, kGpu), gdu = zeros(s, kGpu);
    ops::gated_act_backward(cpu_ctx(), a, x, u, dy, dg, du);
    ops::gated_act_backward(gpu_ctx(), a, on_gpu(x), on_gpu(u), on_gpu(dy), gdg, gdu);
    EXPECT_LT(rel_err(gdg, dg), kElementwiseTol) << "gated dgate " << int(a);
    EXPECT_LT(rel_err(gdu, du), kElementwiseTol) << "gated dup " << int(a);
  }
  // softcap: y = cap * tanh(x / cap) as the forward leaves it
  const float cap = 3.0f;
  Tensor y = x.clone();
  for (int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] = cap * std::tanh(y.data<float>()[i] / cap);
  Tensor d = dy.clone(), gd = on_gpu(dy);
  ops::softcap_backward_(cpu_ctx(), y, cap, d);
  ops::softcap_backward_(gpu_ctx(), on_gpu(y), cap, gd);
  EXPECT_LT(rel_err(gd, d), kElementwiseTol) << "softcap";
  // rope: partial rotation (rot_dim < D) over 3 heads
  const int64_t T = 6, H = 3, D = 20, rot = 12;
  const Tensor g = r.randn({T, H, D}), cs = r.randn({T, rot / 2}), sn = r.randn({T, rot / 2});
  Tensor rg = g.clone(), grg = on_gpu(g);
  ops::rope_backward_(cpu_ctx(), rg, cs, sn, rot);
  ops::rope_backward_(gpu_ctx(), grg, on_gpu(cs), on_gpu(sn), rot);
  EXPECT_LT(rel_err(grg, rg), kElementwiseTol) << "rope";
}

TEST(TrainCuda, EmbeddingBackward) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  const int64_t T = 40, H = 70, V = 13;  // T > V: ids repeat, so rows receive several adds
  std::vector<int64_t> idv(static_cast<size_t>(T));
  for (auto& i : idv) i = int64_t(r.rng() % uint64_t(V));
  const Tensor ids = Tensor::from_vector({T}, DType::I64, idv), dy = r.randn({T, H}), w0 = r.randn({V, H});
  Tensor dw = w0.clone(), gdw = on_gpu(w0);
  ops::embedding_backward(cpu_ctx(), ids, dy, dw);
  ops::embedding_backward(gpu_ctx(), on_gpu(ids), on_gpu(dy), gdw);
  EXPECT_LT(rel_err(gdw, dw), kElementwiseTol);
}

TEST(TrainCuda, AttentionBackwardEveryVariant) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  struct Case {
    int64_t T, Hq, Hkv, D;
    int64_t window;
    float softcap;
    bool alibi;
  };
  const Case cases[] = {{1, 2, 2, 16, 0, 0, false},   {37, 4, 4, 32, 0, 0, false},
                        {37, 8, 2, 64, 0, 0, false},  {50, 4, 1, 24, 7, 0, false},
                        {33, 4, 2, 32, 0, 20, false}, {29, 6, 3, 16, 0, 0, true},
                        {300, 2, 1, 128, 0, 0, false}};
  for (const Case& c : cases) {
    SCOPED_TRACE("T " + std::to_string(c.T) + " Hq " + std::to_string(c.Hq) + " Hkv " +
                 std::to_string(c.Hkv) + " D " + std::to_string(c.D));
    const Tensor q = r.randn({c.T, c.Hq, c.D}), k = r.randn({c.T, c.Hkv, c.D}),
                 v = r.randn({c.T, c.Hkv, c.D});
    const Tensor dout = r.randn({c.T, c.Hq, c.D});
    ops::AttentionOptions o;
    o.scale = 1.0f / std::sqrt(float(c.D));
    if (c.window) o.sliding_window = c.window;
    if (c.softcap > 0) o.softcap = c.softcap;
    if (c.alibi) o.alibi_slopes = r.randn({c.Hq}, 0.1f);
    Tensor dq = zeros(q.shape()), dk = zeros(k.shape()), dv = zeros(v.shape());
    ops::attention_backward(cpu_ctx(), q, k, v, o, dout, dq, dk, dv);
    ops::AttentionOptions go = o;
    go.alibi_slopes = on_gpu(o.alibi_slopes);
    Tensor gdq = zeros(q.shape(), kGpu), gdk = zeros(k.shape(), kGpu), gdv = zeros(v.shape(), kGpu);
    ops::attention_backward(gpu_ctx(), on_gpu(q), on_gpu(k), on_gpu(v), go, on_gpu(dout), gdq, gdk, gdv);
    EXPECT_LT(rel_err(gdq, dq), kGemmTol) << "dq";
    EXPECT_LT(rel_err(gdk, dk), kGemmTol) << "dk";
    EXPECT_LT(rel_err(gdv, dv), kGemmTol) << "dv";
  }
}

// 16-bit k/v (the KV cache's dtype when training with a 16-bit compute dtype): the tensor-core
// backward. It rounds q and dout to that dtype (the reference below takes them rounded too), then
// the probabilities P and dS (one rounding, at most u = 2^-9 bf16 / 2^-12 f16 relative, a term of
// dv = P^T dO, dk = dS^T q, dq = dS k), with f32 sums. So each result is off by about u times
// the RMS of its terms: bounds RMS(err) <= 2u RMS(ref) and max err <= 8u max|ref|. A key or row
// missed, a wrong mask or a wrong scale is an error of order 1/sqrt(T) of the RMS or more.
TEST(TrainCuda, AttentionBackwardTensorCores) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  struct Case {
    int64_t T, Hq, Hkv, D;
    int64_t window;
    float softcap;
    bool alibi;
  };
  const Case cases[] = {{1, 2, 2, 64, 0, 0, false},    {5, 2, 1, 32, 0, 0, false},
                        {37, 4, 4, 32, 0, 0, false},   {100, 8, 2, 64, 0, 0, false},
                        {130, 4, 1, 128, 0, 0, false}, {77, 4, 2, 80, 20, 0, false},
                        {65, 4, 2, 96, 0, 20, false},  {70, 6, 3, 64, 0, 0, true},
                        {300, 2, 1, 128, 0, 0, false}, {200, 4, 2, 64, 64, 30, true}};
  const auto rms = [](const Tensor& a, const Tensor* b) {
    double s = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      const double d = a.data<float>()[i] - (b ? b->data<float>()[i] : 0.0f);
      s += d * d;
    }
    return std::sqrt(s / double(std::max<int64_t>(a.numel(), 1)));
  };
  for (DType dt : {DType::BF16, DType::F16}) {
    const double u = dt == DType::BF16 ? 1.0 / 512 : 1.0 / 4096;
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " T " + std::to_string(c.T) + " Hq " + std::to_string(c.Hq) +
                   " Hkv " + std::to_string(c.Hkv) + " D " + std::to_string(c.D) + " window " +
                   std::to_string(c.window) + " softcap " + std::to_string(c.softcap) + " alibi " +
                   std::to_string(c.alibi));
      const Tensor q = r.randn({c.T, c.Hq, c.D}), dout = r.randn({c.T, c.Hq, c.D});
      const Tensor k = r.randn({c.T, c.Hkv, c.D}).to(dt), v = r.randn({c.T, c.Hkv, c.D}).to(dt);
      const Tensor qr = q.to(dt).to(DType::F32), doutr = dout.to(dt).to(DType::F32);
      ops::AttentionOptions o;
      o.scale = 1.0f / std::sqrt(float(c.D));
      if (c.window) o.sliding_window = c.window;
      if (c.softcap > 0) o.softcap = c.softcap;
      if (c.alibi) o.alibi_slopes = r.randn({c.Hq}, 0.1f);
      Tensor dq = zeros(q.shape()), dk = zeros(k.shape()), dv = zeros(v.shape());
      ops::attention_backward(cpu_ctx(), qr, k, v, o, doutr, dq, dk, dv);
      ops::AttentionOptions go = o;
      go.alibi_slopes = on_gpu(o.alibi_slopes);
      const Tensor gq = on_gpu(q), gk = on_gpu(k), gv = on_gpu(v), gdout = on_gpu(dout);
      Tensor gdq = zeros(q.shape(), kGpu), gdk = zeros(k.shape(), kGpu), gdv = zeros(v.shape(), kGpu);
      cuda::AttentionBackward a;  // the shape as the op passes it: it takes the tensor cores
      a.T = c.T, a.Hq = c.Hq, a.Hkv = c.Hkv, a.D = a.Dv = c.D, a.kv_dtype = dt;
      a.q = gq.data<float>(), a.dout = gdout.data<float>(), a.k = gk.data_ptr(), a.v = gv.data_ptr();
      EXPECT_TRUE(cuda::attention_backward_tc_fits(a));
      // three times: Dsum from a second product with V, then from the forward's output (as
      // training passes it: the GPU forward's own output), then also with the forward's
      // log-sum-exp of each row (written by the tensor-core forward, which takes T >= 16)
      const Tensor gout = Tensor::empty({c.T, c.Hq, c.D}, DType::F32, kGpu);
      const Tensor glse = Tensor::empty({c.T, c.Hq}, DType::F32, kGpu);
      const bool wrote = ops::attention(gpu_ctx(), gq, gk, gv, go, gout, glse);
      EXPECT_EQ(wrote, c.T >= 16);
      if (wrote) {  // lse against the logits of the rounded q and k, in double
        const Tensor hl = on_host(glse), kf = k.to(DType::F32);
        double worst = 0;
        for (int64_t i = 0; i < c.T; ++i)
          for (int64_t h = 0; h < c.Hq; ++h) {
            const int64_t g = h / (c.Hq / c.Hkv);
            std::vector<double> lg;
            for (int64_t j = 0; j <= i; ++j) {
              if (c.window && j <= i - c.window) continue;
              double d = 0;
              for (int64_t e = 0; e < c.D; ++e)
                d += double(qr.data<float>()[(i * c.Hq + h) * c.D + e]) *
                     kf.data<float>()[(j * c.Hkv + g) * c.D + e];
              d *= o.scale;
              if (c.softcap > 0) d = c.softcap * std::tanh(d / c.softcap);
              if (c.alibi) d += double(o.alibi_slopes.data<float>()[h]) * double(j);
              lg.push_back(d);
            }
            const double mx = *std::max_element(lg.begin(), lg.end());
            double sum = 0;
            for (double x : lg) sum += std::exp(x - mx);
            worst = std::max(worst, std::abs(hl.data<float>()[i * c.Hq + h] - (mx + std::log(sum))));
          }
        std::printf("  %s T %lld D %lld lse: max abs err %.2e\n", dtype_name(dt), (long long)c.T,
                    (long long)c.D, worst);
        EXPECT_LE(worst, 1e-4);
      }
      const std::pair<const Tensor*, const Tensor*> variants[] = {
          {nullptr, nullptr}, {&gout, nullptr}, {&gout, wrote ? &glse : nullptr}};
      for (const auto& [fwd_out, fwd_lse] : variants) {
        ops::attention_backward(gpu_ctx(), gq, gk, gv, go, gdout, gdq, gdk, gdv,
                                fwd_out ? *fwd_out : Tensor(), fwd_lse ? *fwd_lse : Tensor());
        for (const auto& [name, got_dev, want] :
             {std::tuple<const char*, const Tensor*, const Tensor*>{"dq", &gdq, &dq},
              {"dk", &gdk, &dk},
              {"dv", &gdv, &dv}}) {
          const Tensor got = on_host(*got_dev);
          // T = 1: dq and dk are exactly 0 (one key's softmax has no gradient). Without O the
          // kernels give exactly 0 (max err covers it); with O, Dsum = dO . O is the same sum as
          // dP in another order, so dS = dP - Dsum is rounding noise: its errors are measured
          // against dv's size (the gradients' scale) there.
          const Tensor* scale = rms(*want, nullptr) > 0 ? want : &dv;
          double diff = 0, size = 1e-30;
          for (int64_t i = 0; i < want->numel(); ++i)
            diff = std::isfinite(got.data<float>()[i])
                       ? std::max(diff, double(std::abs(got.data<float>()[i] - want->data<float>()[i])))
                       : INFINITY;
          for (int64_t i = 0; i < scale->numel(); ++i)
            size = std::max(size, double(std::abs(scale->data<float>()[i])));
          const double e = diff / size, er = rms(got, want) / std::max(rms(*scale, nullptr), 1e-30);
          const char* how = fwd_lse ? " with O and lse" : fwd_out ? " with O" : "";
          std::printf("  %s T %lld D %lld %s%s: max err %.2fu, rms err %.2fu\n", dtype_name(dt),
                      (long long)c.T, (long long)c.D, name, how, e / u, er / u);
          EXPECT_LE(e, 8 * u) << name << how;
          EXPECT_LE(er, 2 * u) << name << how;
        }
      }
    }
  }
}

// The optimizer on the device: AdamW and the clip's scaling give the host's bits (no fused
// multiply-adds, IEEE sqrt and division); the sum of squares is a double sum in another order
// (within 1e-12 relative).
TEST(TrainCuda, OptimizerStep) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(300001)}) {
    SCOPED_TRACE("n " + std::to_string(n));
    const Tensor x = r.randn({n}), g = r.randn({n}, 0.01f), m = r.randn({n}, 0.001f);
    Tensor v = r.randn({n}, 0.001f);
    for (int64_t i = 0; i < n; ++i) v.data<float>()[i] *= v.data<float>()[i];  // >= 0
    ops::AdamWStep st;
    st.step_size = 1e-3f / 0.19f, st.bc2_sqrt = 0.0447f, st.decay = 0.99999f;
    Tensor hx = x.clone(), hm = m.clone(), hv = v.clone();
    ops::adamw_(cpu_ctx(), hx, g, hm, hv, st);
    Tensor gx = on_gpu(x), gm = on_gpu(m), gv = on_gpu(v);
    ops::adamw_(gpu_ctx(), gx, on_gpu(g), gm, gv, st);
    for (const auto& [name, a, b] :
         {std::tuple<const char*, Tensor*, Tensor*>{"x", &gx, &hx}, {"m", &gm, &hm}, {"v", &gv, &hv}}) {
      const Tensor got = on_host(*a);
      EXPECT_EQ(std::memcmp(got.data_ptr(), b->data_ptr(), size_t(b->nbytes())), 0) << name;
    }
    // segments: empty, the first third, empty, the rest
    const std::vector<int64_t> ends = {0, n / 3, n / 3, n};
    const Tensor sq = Tensor::zeros({4}, DType::F64, kGpu), hsq = Tensor::zeros({4}, DType::F64);
    ops::sum_squares(gpu_ctx(), on_gpu(g), on_gpu(Tensor::from_vector({4}, DType::I64, ends)), sq);
    ops::sum_squares(cpu_ctx(), g, Tensor::from_vector({4}, DType::I64, ends), hsq);
    const Tensor got = on_host(sq);
    for (int k = 0; k < 4; ++k) {
      const int64_t b = k ? ends[size_t(k - 1)] : 0;
      const double want = ops::sum_squares(g.data<float>() + b, ends[size_t(k)] - b);
      EXPECT_EQ(hsq.data<double>()[k], want) << k;
      EXPECT_NEAR(got.data<double>()[k], want, 1e-12 * want) << k;
    }
    EXPECT_EQ(got.data<double>()[0], 0.0);
    EXPECT_EQ(got.data<double>()[2], 0.0);
    Tensor hs = g.clone(), gs = on_gpu(g);
    ops::scale_(cpu_ctx(), hs, 0.37);
    ops::scale_(gpu_ctx(), gs, 0.37);
    EXPECT_EQ(std::memcmp(on_host(gs).data_ptr(), hs.data_ptr(), size_t(hs.nbytes())), 0);
  }
}

TEST(TrainCuda, CrossEntropyHeadBackward) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  const int64_t T = 19, H = 48, V = 1000;
  // bf16 values: the TF32 path's logits are then exact products (only the summation order differs)
  const Tensor h = r.randn({T, H}).to(DType::BF16).to(DType::F32),
               W = r.randn({V, H}, 0.2f).to(DType::BF16).to(DType::F32);
  std::vector<int64_t> tv(static_cast<size_t>(T));
  for (auto& t : tv) t = r.rng() % 4 == 0 ? -100 : int64_t(r.rng() % uint64_t(V));
  const Tensor tg = Tensor::from_vector({T}, DType::I64, tv);
  for (float softcap : {0.0f, 15.0f}) {
    for (int64_t chunk : {int64_t(128), int64_t(333), int64_t(4096)}) {  // uneven last chunk, one chunk
      SCOPED_TRACE("softcap " + std::to_string(softcap) + " chunk " + std::to_string(chunk));
      Tensor dh = zeros({T, H}), gdh = zeros({T, H}, kGpu), tdh = zeros({T, H}, kGpu);
      const ops::HeadLoss c = ops::cross_entropy_head_backward(cpu_ctx(), h, W, tg, softcap, chunk, 0.1f, dh);
      const ops::HeadLoss g = ops::cross_entropy_head_backward(gpu_ctx(), on_gpu(h), on_gpu(W), on_gpu(tg),
                                                               softcap, chunk, 0.1f, gdh);
      EXPECT_EQ(g.n_targets, c.n_targets);
      EXPECT_NEAR(g.loss_sum, c.loss_sum, kElementwiseTol * std::abs(c.loss_sum));
      EXPECT_LT(rel_err(gdh, dh), kGemmTol);
      // TF32 (a 16-bit head): logits of bf16 values are exact products, so the loss is as close;
      // dh takes the softmax gradient rounded to 11 significant bits (2^-11 = 4.9e-4 a term)
      const ops::HeadLoss t = ops::cross_entropy_head_backward(gpu_ctx(), on_gpu(h), on_gpu(W), on_gpu(tg),
                                                               softcap, chunk, 0.1f, tdh, true);
      EXPECT_EQ(t.n_targets, c.n_targets);
      EXPECT_NEAR(t.loss_sum, c.loss_sum, kElementwiseTol * std::abs(c.loss_sum)) << "tf32";
      EXPECT_LT(rel_err(tdh, dh), 1e-3) << "tf32";
      EXPECT_GT(rel_err(tdh, on_host(gdh)), 1e-5) << "the TF32 path ran in f32";
    }
  }
}

// A head stored in 16 bits (bitsandbytes' autocast): cuda::cross_entropy_head16, whole rows at a
// time (T = 300 > its 256 rows: two row chunks), against the CPU branch's arithmetic.
TEST(TrainCuda, CrossEntropyHead16) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  const int64_t T = 300, H = 48, V = 1000;
  const Tensor h = r.randn({T, H}), W32 = r.randn({V, H}, 0.2f);
  std::vector<int64_t> tv(static_cast<size_t>(T));
  for (auto& t : tv) t = r.rng() % 4 == 0 ? -100 : int64_t(r.rng() % uint64_t(V));
  const Tensor tg = Tensor::from_vector({T}, DType::I64, tv);
  for (DType wd : {DType::BF16, DType::F16})
    for (float softcap : {0.0f, 15.0f}) {
      SCOPED_TRACE(std::string(dtype_name(wd)) + " softcap " + std::to_string(softcap));
      const Tensor W = W32.to(wd);
      Tensor dh = zeros({T, H}), gdh = zeros({T, H}, kGpu), fdh = zeros({T, H});
      const ops::HeadLoss c = ops::cross_entropy_head_backward(cpu_ctx(), h, W, tg, softcap, 256, 0.1f, dh);
      const ops::HeadLoss g = ops::cross_entropy_head_backward(gpu_ctx(), on_gpu(h), on_gpu(W), on_gpu(tg),
                                                               softcap, 256, 0.1f, gdh);
      EXPECT_EQ(g.n_targets, c.n_targets);
      EXPECT_NEAR(g.loss_sum, c.loss_sum, kElementwiseTol * std::abs(c.loss_sum));
      // the same roundings; G's 16-bit rounding may go the other way where the f32 GEMMs' orders
      // straddle a boundary (rare: one 16-bit ulp on an element)
      EXPECT_LT(rel_err(gdh, dh), 1e-3);
      ops::cross_entropy_head_backward(cpu_ctx(), h.to(wd).to(DType::F32), W.to(DType::F32), tg, softcap, 256,
                                       0.1f, fdh);
      EXPECT_GT(rel_err(gdh, fdh), 1e-5) << "G was not rounded to " << dtype_name(wd);
    }
  EXPECT_THROW(ops::cross_entropy_head_backward(gpu_ctx(), on_gpu(h), Tensor::zeros({V, H}, DType::I32, kGpu),
                                                on_gpu(tg), 0.0f, 256, 0.1f, zeros({T, H}, kGpu)),
               ShapeError);
}

TEST(TrainCuda, LoraForwardBackwardWithDropout) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  const int64_t M = 23, in = 96, out = 80, rank = 8;
  nn::LoraWeights w;
  w.A = r.randn({rank, in}, 0.1f);
  w.B = r.randn({out, rank}, 0.1f);
  w.scale = 2.0f;
  nn::LoraWeights gw = w;
  gw.A = on_gpu(w.A);
  gw.B = on_gpu(w.B);
  const Tensor x = r.randn({M, in}), y0 = r.randn({M, out}), dy = r.randn({M, out});
  // tf32 (a model with a 16-bit compute dtype): each GEMM's inputs rounded to TF32 (2^-11
  // relative), so a sum of products is off by at most 2^-10 of the sum of their magnitudes; with
  // these shapes and the accumulated f32 inputs, 4e-3 of the largest value
  for (bool tf32 : {false, true})
    for (float p : {0.0f, 0.25f}) {
      SCOPED_TRACE("dropout " + std::to_string(p) + (tf32 ? " tf32" : ""));
      gw.tf32 = tf32;
      const double tol = tf32 ? 4e-3 : kGemmTol;
      Tensor y = y0.clone(), gy = on_gpu(y0);
      nn::LoraCache cs, gs;
      nn::lora_forward(cpu_ctx(), w, x, p, 1234, y, &cs);
      nn::lora_forward(gpu_ctx(), gw, on_gpu(x), p, 1234, gy, &gs);
      EXPECT_LT(rel_err(gy, y), tol) << "out";
      EXPECT_LT(rel_err(gs.h, cs.h), tol) << "h";
      const Tensor dA0 = r.randn({rank, in}), dB0 = r.randn({out, rank}), dx0 = r.randn({M, in});
      Tensor dA = dA0.clone(), dB = dB0.clone(), dx = dx0.clone();
      Tensor gdA = on_gpu(dA0), gdB = on_gpu(dB0), gdx = on_gpu(dx0);
      nn::lora_backward(cpu_ctx(), w, x, dy, cs, dA, dB, dx);
      nn::lora_backward(gpu_ctx(), gw, on_gpu(x), on_gpu(dy), gs, gdA, gdB, gdx);
      EXPECT_LT(rel_err(gdA, dA), tol) << "dA";
      EXPECT_LT(rel_err(gdB, dB), tol) << "dB";
      EXPECT_LT(rel_err(gdx, dx), tol) << "dx";
    }
}

TEST(TrainCuda, BaseDxEveryFormat) {
  SKIP_WITHOUT_CUDA();
  SEEDED(r);
  const int64_t M = 7, in = 4096,
                out = 200;  // in = 4096: a tile of 64 rows, so several tiles and a partial one
  const Tensor w = r.randn({out, in}, 0.05f);
  std::vector<std::pair<std::string, nn::Linear>> cases;
  cases.push_back({"fp32", nn::Linear::fp(w, Tensor())});
  cases.push_back({"bf16", nn::Linear::fp(w.to(DType::BF16), Tensor())});
  for (DType qt : {DType::NF4, DType::FP4})
    for (bool nested : {false, true})
      for (DType ct : {DType::F32, DType::BF16}) {
        Quantized4 q = quantize_4bit(w, qt, 64, nested);
        cases.push_back({std::string(dtype_name(qt)) + (nested ? " nested " : " ") + dtype_name(ct),
                         nn::Linear::four_bit(q.packed, q.state, Tensor(), ct)});
      }
  Int8Rowwise q8 = int8_vectorwise_quant(w.to(DType::F16), 0.0f);
  cases.push_back({"int8", nn::Linear::int8(q8.CA, q8.SCA, Tensor(), 6.0f)});
  const Tensor dy = r.randn({M, out}), dx0 = r.randn({M, in});
  for (const auto& [name, lin] : cases) {
    Tensor dx = dx0.clone(), gdx = on_gpu(dx0);
    nn::linear_backward_dx(cpu_ctx(), lin, dy, dx);
    nn::linear_backward_dx(gpu_ctx(), lin.to(kGpu), on_gpu(dy), gdx);
    // a 4-bit weight with bf16 compute: dy rounded to bf16 (at most u = 2^-9 relative a term), so
    // the error is at most u times sum |dy W| (about 1.6 max|dx| with these magnitudes): 2u
    const bool bf16_dy = lin.format() != nn::WeightFormat::Fp && lin.format() != nn::WeightFormat::Int8 &&
                         name.ends_with("bf16");
    EXPECT_LT(rel_err(gdx, dx), bf16_dy ? 2.0 / 512 : kGemmTol) << name;
  }
  // 4-bit with bf16 compute over several tensor-core tiles (16M values each): a wide weight in
  // column tiles (2048 x 8320: 8192 + 128 columns), a tall one in row tiles (8320 x 2048)
  for (const auto& [n_out, n_in] : {std::pair<int64_t, int64_t>{2048, 8320}, {8320, 2048}}) {
    const Tensor wb = r.randn({n_out, n_in}, 0.02f), dyb = r.randn({M, n_out}), dxb = r.randn({M, n_in});
    for (bool nested : {false, true}) {
      SCOPED_TRACE(std::to_string(n_out) + " x " + std::to_string(n_in) + (nested ? " nested" : ""));
      Quantized4 q = quantize_4bit(wb, DType::NF4, 64, nested);
      const nn::Linear lin = nn::Linear::four_bit(q.packed, q.state, Tensor(), DType::BF16);
      Tensor dx = dxb.clone(), gdx = on_gpu(dxb);
      nn::linear_backward_dx(cpu_ctx(), lin, dyb, dx);
      nn::linear_backward_dx(gpu_ctx(), lin.to(kGpu), on_gpu(dyb), gdx);
      EXPECT_LT(rel_err(gdx, dx), 2.0 / 512);
    }
  }
}

}  // namespace
#endif
