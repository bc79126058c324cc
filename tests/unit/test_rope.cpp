// Rope tables against the formulas of modeling_rope_utils.py evaluated independently in double
// precision. The float32 results must agree to within the float32 rounding the torch expression
// itself incurs: a few ulps, scaled by |ln(result)| because the exponent arange/dim is rounded
// to float32 before the pow (so the bound is (8 + |ln x|) ulp-units of 2^-24, relative).
// Bit-exact agreement with transformers is checked in tests/golden against its own output.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "models/rope.h"
#include "nibble/error.h"

namespace nibble {
namespace {

using json = nlohmann::json;
constexpr double kPi = std::numbers::pi;

ModelConfig make(int64_t hidden, int64_t heads, int64_t max_pos, const json& rope_parameters,
                 const char* model_type = "llama") {
  json j = {{"model_type", model_type},
            {"vocab_size", 10},
            {"hidden_size", hidden},
            {"intermediate_size", 8},
            {"num_hidden_layers", 1},
            {"num_attention_heads", heads},
            {"num_key_value_heads", heads},
            {"max_position_embeddings", max_pos},
            {"rope_parameters", rope_parameters}};
  return ModelConfig::from_json(j, "test");
}

void expect_near_formula(const std::vector<float>& got, const std::vector<double>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = (8 + std::abs(std::log(want[i]))) * 0x1p-24 * std::abs(want[i]);
    EXPECT_NEAR(double(got[i]), want[i], tol) << what << " [" << i << "]";
  }
}

// base^(-2i/dim), exactly.
std::vector<double> ref_default(double base, int64_t dim) {
  std::vector<double> v;
  for (int64_t i = 0; i < dim; i += 2) v.push_back(std::pow(base, -double(i) / double(dim)));
  return v;
}

TEST(Rope, DefaultMatchesFormula) {
  for (auto [hidden, heads, theta] : {std::tuple{4096, 32, 10000.0},
                                      {2560, 32, 10000.0},
                                      {896, 14, 1e6},
                                      {96, 6, 500000.0},
                                      {64, 4, 10000.0}}) {
    ModelConfig c = make(hidden, heads, 2048, {{"rope_type", "default"}, {"rope_theta", theta}});
    RopeTables r = rope_init(c);
    EXPECT_EQ(r.rot_dim, hidden / heads);
    EXPECT_EQ(r.attention_scaling, 1.0f);
    EXPECT_EQ(r.inv_freq[0], 1.0f);
    expect_near_formula(r.inv_freq, ref_default(theta, hidden / heads), "default");
  }
}

TEST(Rope, PartialRotaryForPhi3AndNeox) {
  // gpt_neox/phi3 apply partial_rotary_factor to their default rope: dim = int(head_dim * f).
  ModelConfig c =
      make(2048, 16, 2048,
           {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.25}}, "gpt_neox");
  RopeTables r = rope_init(c);
  EXPECT_EQ(r.rot_dim, 32);
  expect_near_formula(r.inv_freq, ref_default(10000.0, 32), "neox partial");
  c = make(3072, 32, 4096,
           {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.5}}, "phi3");
  EXPECT_EQ(rope_init(c).rot_dim, 48);
}

TEST(Rope, Linear) {
  ModelConfig c = make(2048, 32, 4096, {{"rope_type", "linear"}, {"factor", 4.0}, {"rope_theta", 10000.0}});
  std::vector<double> want = ref_default(10000.0, 64);
  for (double& w : want) w /= 4.0;
  expect_near_formula(rope_init(c).inv_freq, want, "linear");
}

TEST(Rope, DynamicNtk) {
  ModelConfig c = make(4096, 32, 2048, {{"rope_type", "dynamic"}, {"factor", 2.0}, {"rope_theta", 10000.0}});
  ModelConfig d = make(4096, 32, 2048, {{"rope_type", "default"}, {"rope_theta", 10000.0}});
  // Up to max_position_embeddings the base is unchanged: (2 * 2048 / 2048 - 1) ** x == 1.
  EXPECT_EQ(rope_init(c).inv_freq, rope_init(d).inv_freq);
  EXPECT_EQ(rope_init(c, 2048).inv_freq, rope_init(d).inv_freq);
  for (int64_t seq : {2049, 5000, 8192, 100000}) {
    const double dim = 128;
    const double base = 10000.0 * std::pow(2.0 * double(seq) / 2048 - 1, dim / (dim - 2));
    RopeTables r = rope_init(c, seq);
    expect_near_formula(r.inv_freq, ref_default(base, 128), "dynamic");
    EXPECT_LT(r.inv_freq.back(), rope_init(d).inv_freq.back());
  }
}

TEST(Rope, Llama3Smoothing) {
  const double factor = 8, low = 1, high = 4, old_ctx = 8192;
  ModelConfig c = make(4096, 32, 131072,
                       {{"rope_type", "llama3"},
                        {"factor", factor},
                        {"low_freq_factor", low},
                        {"high_freq_factor", high},
                        {"original_max_position_embeddings", 8192},
                        {"rope_theta", 500000.0}});
  ModelConfig d = make(4096, 32, 131072, {{"rope_type", "default"}, {"rope_theta", 500000.0}});
  const std::vector<float> got = rope_init(c).inv_freq, plain = rope_init(d).inv_freq;
  const std::vector<double> base = ref_default(500000.0, 128);
  int n_high = 0, n_low = 0, n_mid = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double wavelen = 2 * kPi / base[i];
    if (wavelen < old_ctx / high) {  // high frequency: untouched
      EXPECT_EQ(got[i], plain[i]) << i;
      ++n_high;
    } else if (wavelen > old_ctx / low) {  // low frequency: divided by factor
      EXPECT_EQ(got[i], plain[i] / float(factor)) << i;
      ++n_low;
    } else {  // in between: smooth interpolation
      const double s = (old_ctx / wavelen - low) / (high - low);
      const double want = (1 - s) * base[i] / factor + s * base[i];
      EXPECT_NEAR(double(got[i]), want, (8 + std::abs(std::log(want))) * 0x1p-24 * want) << i;
      ++n_mid;
    }
  }
  EXPECT_GT(n_high, 0);
  EXPECT_GT(n_low, 0);
  EXPECT_GT(n_mid, 0);
}

// Yarn in double, from the paper's formulas as transformers writes them.
std::vector<double> ref_yarn(double base, int64_t dim, double factor, double orig, double beta_fast,
                             double beta_slow, bool truncate) {
  auto corr = [&](double rot) { return dim * std::log(orig / (rot * 2 * kPi)) / (2 * std::log(base)); };
  double lo = corr(beta_fast), hi = corr(beta_slow);
  if (truncate) lo = std::floor(lo), hi = std::ceil(hi);
  lo = std::max(lo, 0.0), hi = std::min(hi, double(dim - 1));
  if (lo == hi) hi += 0.001;
  std::vector<double> v = ref_default(base, dim);
  for (size_t i = 0; i < v.size(); ++i) {
    const double extrap = 1 - std::clamp((double(i) - lo) / (hi - lo), 0.0, 1.0);
    v[i] = v[i] / factor * (1 - extrap) + v[i] * extrap;
  }
  return v;
}

TEST(Rope, YarnTruncateAndMscale) {
  json p = {{"rope_type", "yarn"},
            {"factor", 4.0},
            {"original_max_position_embeddings", 32768},
            {"rope_theta", 1e6}};
  RopeTables r = rope_init(make(5120, 40, 131072, p, "qwen2"));
  expect_near_formula(r.inv_freq, ref_yarn(1e6, 128, 4, 32768, 32, 1, true), "yarn");
  EXPECT_FLOAT_EQ(r.attention_scaling, float(0.1 * std::log(4.0) + 1));

  p["truncate"] = false;
  RopeTables nt = rope_init(make(5120, 40, 131072, p, "qwen2"));
  expect_near_formula(nt.inv_freq, ref_yarn(1e6, 128, 4, 32768, 32, 1, false), "yarn no truncate");
  EXPECT_NE(nt.inv_freq, r.inv_freq);

  // beta_fast 0 is falsy in Python: `.get("beta_fast") or 32`.
  p["truncate"] = true;
  p["beta_fast"] = 0;
  EXPECT_EQ(rope_init(make(5120, 40, 131072, p, "qwen2")).inv_freq, r.inv_freq);

  // mscale / mscale_all_dim (DeepSeek style) set the attention factor as a ratio.
  p = {{"rope_type", "yarn"},   {"factor", 40.0}, {"original_max_position_embeddings", 4096},
       {"rope_theta", 10000.0}, {"mscale", 1.0},  {"mscale_all_dim", 0.707}};
  auto mscale = [](double s, double m) { return 0.1 * m * std::log(s) + 1; };
  EXPECT_FLOAT_EQ(rope_init(make(2048, 16, 163840, p)).attention_scaling,
                  float(mscale(40, 1.0) / mscale(40, 0.707)));
  p["attention_factor"] = 0.5;  // explicit value wins
  EXPECT_EQ(rope_init(make(2048, 16, 163840, p)).attention_scaling, 0.5f);
  // factor null: max_position_embeddings / original_max_position_embeddings.
  p = {{"rope_type", "yarn"},
       {"factor", nullptr},
       {"original_max_position_embeddings", 4096},
       {"rope_theta", 10000.0}};
  RopeTables rn = rope_init(make(2048, 16, 16384, p));
  expect_near_formula(rn.inv_freq, ref_yarn(10000, 128, 4, 4096, 32, 1, true), "yarn factor from lengths");
}

TEST(Rope, LongropeShortLong) {
  std::vector<double> s_f, l_f;
  for (int i = 0; i < 48; ++i) s_f.push_back(1 + 0.05 * i), l_f.push_back(1 + 0.5 * i);
  json p = {{"rope_type", "longrope"},
            {"short_factor", s_f},
            {"long_factor", l_f},
            {"rope_theta", 10000.0},
            {"original_max_position_embeddings", 4096}};
  ModelConfig c = make(3072, 32, 131072, p);
  const std::vector<double> base = ref_default(10000, 96);
  for (auto [seq, ext] : {std::pair{int64_t(0), &s_f}, {4096, &s_f}, {4097, &l_f}}) {
    RopeTables r = rope_init(c, seq);
    std::vector<double> want(base.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = base[i] / (*ext)[i];
    expect_near_formula(r.inv_freq, want, "longrope");
    // factor absent: 131072 / 4096 = 32 sets the attention factor.
    EXPECT_FLOAT_EQ(r.attention_scaling, float(std::sqrt(1 + std::log(32.0) / std::log(4096.0))));
  }
  p["factor"] = 1.0;
  EXPECT_EQ(rope_init(make(3072, 32, 131072, p)).attention_scaling, 1.0f);
}

TEST(Rope, CosSinLayoutAndScaling) {
  json p = {{"rope_type", "yarn"},
            {"factor", 4.0},
            {"original_max_position_embeddings", 64},
            {"rope_theta", 10000.0}};
  RopeTables r = rope_init(make(64, 4, 256, p));
  ASSERT_EQ(r.inv_freq.size(), 8u);
  const int64_t pos[] = {0, 3, 255, 70000};
  std::vector<float> cs(4 * 8), sn(4 * 8);
  rope_cos_sin(r, pos, 4, cs.data(), sn.data());
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 8; ++i) {
      const double arg = double(r.inv_freq[size_t(i)] * float(pos[t]));  // one float32 product
      EXPECT_NEAR(cs[size_t(t * 8 + i)], std::cos(arg) * r.attention_scaling, 3e-7) << t << "," << i;
      EXPECT_NEAR(sn[size_t(t * 8 + i)], std::sin(arg) * r.attention_scaling, 3e-7) << t << "," << i;
    }
  EXPECT_EQ(cs[0], r.attention_scaling);
  EXPECT_EQ(sn[0], 0.0f);
}

TEST(Rope, StateFollowsDynamicUpdate) {
  ModelConfig c = make(4096, 32, 2048, {{"rope_type", "dynamic"}, {"factor", 2.0}, {"rope_theta", 10000.0}});
  RopeState st(c);
  const auto init = rope_init(c).inv_freq;
  EXPECT_EQ(st.update(100).inv_freq, init);
  EXPECT_EQ(st.update(8191).inv_freq, rope_init(c, 8192).inv_freq);  // growth
  EXPECT_EQ(st.update(4999).inv_freq, rope_init(c, 8192).inv_freq);  // no shrink above 2048
  EXPECT_EQ(st.update(2047).inv_freq, rope_init(c, 8192).inv_freq);  // seq 2048 is not < 2048
  EXPECT_EQ(st.update(100).inv_freq, init);                          // reset
  EXPECT_EQ(st.update(4999).inv_freq, rope_init(c, 5000).inv_freq);
}

TEST(Rope, StateFollowsLongrope) {
  json p = {{"rope_type", "longrope"},
            {"short_factor", std::vector<double>(8, 1.0)},
            {"long_factor", std::vector<double>(8, 4.0)},
            {"original_max_position_embeddings", 64}};
  ModelConfig c = make(64, 4, 256, p);
  RopeState st(c);
  const RopeTables init = rope_init(c);
  EXPECT_EQ(st.update(63).inv_freq, init.inv_freq);
  const RopeTables& l = st.update(64);
  EXPECT_EQ(l.inv_freq, rope_init(c, 65).inv_freq);
  EXPECT_EQ(l.attention_scaling, init.attention_scaling);
  EXPECT_EQ(st.update(10).inv_freq, init.inv_freq);
}

TEST(Rope, NoRopeIsAnError) {
  ModelConfig c = ModelConfig::from_json(
      json::parse(R"({"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2})"),
      "g");
  EXPECT_EQ(c.rope_dim(), 0);
  EXPECT_THROW(rope_init(c), ConfigError);
}

}  // namespace
}  // namespace nibble
