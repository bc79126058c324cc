// AdamW, clip_grad_norm and LR schedules against values computed in Python (double) with the
// formulas of torch.optim.AdamW (_single_tensor_adamw), torch.nn.utils.clip_grad_norm_ and
// transformers.optimization (get_linear/cosine/constant_schedule_with_warmup, get_warmup_steps);
// the script is in the commit message of this test. f32 state here: tolerance a few f32 ulps.
#include <gtest/gtest.h>

#include "nibble/error.h"
#include "train/optim.h"

namespace nibble::train {
namespace {

TEST(TrainOptim, AdamWMatchesTorchFormulas) {
  std::vector<float> p = {0.5f, -1.25f, 2.0f}, g(3);
  const float grads[3][3] = {{0.1f, -0.2f, 0.3f}, {0.05f, 0.4f, -0.1f}, {-0.3f, 0.0f, 0.2f}};
  AdamW opt({{p.data(), g.data(), 3}}, 1e-2, 0.9, 0.999, 1e-8, 0.1);
  for (const auto& gs : grads) {
    std::copy(gs, gs + 3, g.begin());
    opt.step();
  }
  // Python (double): [0.4826812519662487, -1.2427611041336426, 1.9739969403424882]
  const double want[3] = {0.4826812519662487, -1.2427611041336426, 1.9739969403424882};
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[size_t(i)], want[i], 4e-7) << i;
  EXPECT_EQ(opt.steps(), 3);
  opt.zero_grad();
  EXPECT_EQ(g[0], 0.0f);
}

TEST(TrainOptim, ClipGradNorm) {
  std::vector<float> a = {3.0f}, b = {4.0f}, va(1), vb(1);
  std::vector<ParamRef> ps = {{va.data(), a.data(), 1}, {vb.data(), b.data(), 1}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 10.0), 5.0);  // below max: untouched
  EXPECT_EQ(a[0], 3.0f);
  EXPECT_DOUBLE_EQ(clip_grad_norm(ps, 1.0), 5.0);
  EXPECT_FLOAT_EQ(a[0], float(3.0 / (5.0 + 1e-6)));  // coef = max_norm / (norm + 1e-6)
  EXPECT_FLOAT_EQ(b[0], float(4.0 / (5.0 + 1e-6)));
  std::vector<float> c = {30.0f};
  std::vector<ParamRef> pc = {{va.data(), c.data(), 1}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(pc, 0.0), 30.0);  // 0: clipping off
  EXPECT_EQ(c[0], 30.0f);
}

TEST(TrainOptim, Schedules) {
  EXPECT_EQ(warmup_steps_for(10, 0, 0.25), 3);  // ceil(2.5)
  EXPECT_EQ(warmup_steps_for(10, 4, 0.25), 4);  // warmup_steps wins
  const double lin[11] = {0.0,
                          0.3333333333333333,
                          0.6666666666666666,
                          1.0,
                          0.8571428571428571,
                          0.7142857142857143,
                          0.5714285714285714,
                          0.42857142857142855,
                          0.2857142857142857,
                          0.14285714285714285,
                          0.0};
  const double cos[11] = {0.0,
                          0.3333333333333333,
                          0.6666666666666666,
                          1.0,
                          0.9504844339512095,
                          0.8117449009293668,
                          0.6112604669781572,
                          0.38873953302184283,
                          0.18825509907063326,
                          0.04951556604879048,
                          0.0};
  for (int s = 0; s <= 10; ++s) {
    EXPECT_NEAR(lr_lambda("linear", s, 3, 10), lin[s], 1e-15) << s;
    EXPECT_NEAR(lr_lambda("cosine", s, 3, 10), cos[s], 1e-15) << s;
    EXPECT_EQ(lr_lambda("constant_with_warmup", s, 3, 10), s < 3 ? s / 3.0 : 1.0) << s;
    EXPECT_EQ(lr_lambda("constant", s, 3, 10), 1.0);
  }
  EXPECT_THROW(lr_lambda("polynomial", 0, 0, 10), ConfigError);
}

}  // namespace
}  // namespace nibble::train
