#include "batched_decode_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/exec_context.h"
#include "ops/nn_ops.h"

namespace nibble::test {
namespace {

Tensor randn_on(Device dev, const Shape& shape, std::mt19937_64& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = nd(rng);
  return Tensor::from_vector(shape, DType::F32, v).to(dev);
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor h = t.to(Device::cpu());
  const auto* p = static_cast<const uint8_t*>(h.data_ptr());
  return {p, p + h.nbytes()};
}

std::vector<float> floats_of(const Tensor& t) {
  Tensor h = t.contiguous().to(Device::cpu());
  return {h.data<float>(), h.data<float>() + h.numel()};
}

int64_t address(const Tensor& t) { return int64_t(reinterpret_cast<uintptr_t>(t.data_ptr())); }

}  // namespace

void check_batched_decode(Device dev, DType kv_dtype, uint64_t seed, double tol) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " on " << dev.str() << " " << dtype_name(kv_dtype));
  std::mt19937_64 rng(seed);
  ExecContext& ctx = ExecContext::current(dev);
  const int64_t B = 3, Hq = 4, Hkv = 2, D = 32, rot = D;
  const std::vector<int64_t> cap = {10, 16, 7}, pos = {4, 15, 0};
  // the caches: random history, one copy for each form
  std::vector<Tensor> kc1, vc1, kc2, vc2;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = cap[size_t(b)];
    Tensor k0 = randn_on(dev, {c, Hkv * D}, rng), v0 = randn_on(dev, {c, Hkv * D}, rng);
    for (auto* dst : {&kc1, &kc2}) {
      dst->push_back(Tensor::empty({c, Hkv, D}, kv_dtype, dev));
      ops::copy_(ctx, k0, dst->back().view({c, Hkv * D}));
    }
    for (auto* dst : {&vc1, &vc2}) {
      dst->push_back(Tensor::empty({c, Hkv, D}, kv_dtype, dev));
      ops::copy_(ctx, v0, dst->back().view({c, Hkv * D}));
    }
  }
  Tensor q = randn_on(dev, {B, Hq, D}, rng), k = randn_on(dev, {B, Hkv, D}, rng), v = randn_on(dev, {B, Hkv * D}, rng);
  Tensor cs = randn_on(dev, {B, rot / 2}, rng), sn = randn_on(dev, {B, rot / 2}, rng);
  Tensor q1 = Tensor::empty(q.shape(), DType::F32, dev), k1 = Tensor::empty(k.shape(), DType::F32, dev);
  Tensor q2 = Tensor::empty(q.shape(), DType::F32, dev), k2 = Tensor::empty(k.shape(), DType::F32, dev);
  for (Tensor* t : {&q1, &q2}) ops::copy_(ctx, q.view({B, Hq * D}), t->view({B, Hq * D}));
  for (Tensor* t : {&k1, &k2}) ops::copy_(ctx, k.view({B, Hkv * D}), t->view({B, Hkv * D}));
  Tensor pos_t = Tensor::from_vector({B}, DType::I64, pos).to(dev);
  ops::AttentionOptions ao;
  ao.scale = 1.0f / std::sqrt(float(D));

  // one call a sequence
  Tensor out1 = Tensor::empty({B, Hq, D}, DType::F32, dev);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = cap[size_t(b)];
    Tensor p = pos_t.slice(0, b, b + 1);
    ops::rope_kv_write_(ctx, q1.slice(0, b, b + 1), k1.slice(0, b, b + 1), v.slice(0, b, b + 1),
                        cs.slice(0, b, b + 1), sn.slice(0, b, b + 1), rot, kc1[size_t(b)].view({c, Hkv * D}),
                        vc1[size_t(b)].view({c, Hkv * D}), p, 0);
    ops::AttentionOptions o = ao;
    o.q_pos = p;
    ops::attention(ctx, q1.slice(0, b, b + 1), kc1[size_t(b)], vc1[size_t(b)], o, out1.slice(0, b, b + 1));
  }
  // the table form: the longest cache as the template
  std::vector<int64_t> tab(size_t(2 * B));
  for (int64_t b = 0; b < B; ++b)
    tab[size_t(b)] = address(kc2[size_t(b)]), tab[size_t(B + b)] = address(vc2[size_t(b)]);
  Tensor tab_t = Tensor::from_vector({2, B}, DType::I64, tab).to(dev);
  const int64_t big = 1;
  Tensor out2 = Tensor::empty({B, Hq, D}, DType::F32, dev);
  ops::rope_kv_write_(ctx, q2, k2, v, cs, sn, rot, kc2[big].view({cap[big], Hkv * D}),
                      vc2[big].view({cap[big], Hkv * D}), pos_t, 0, tab_t);
  ops::AttentionOptions o = ao;
  o.q_pos = pos_t;
  o.kv_table = tab_t;
  ops::attention(ctx, q2, kc2[big], vc2[big], o, out2);
  ctx.synchronize();

  EXPECT_EQ(floats_of(q1), floats_of(q2)) << "rotated q";
  EXPECT_EQ(floats_of(k1), floats_of(k2)) << "rotated k";
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(bytes_of(kc1[size_t(b)]), bytes_of(kc2[size_t(b)])) << "k cache " << b;
    EXPECT_EQ(bytes_of(vc1[size_t(b)]), bytes_of(vc2[size_t(b)])) << "v cache " << b;
  }
  const std::vector<float> a = floats_of(out1), c = floats_of(out2);
  double scale = 0, err = 0;
  for (size_t i = 0; i < a.size(); ++i)
    scale = std::max(scale, double(std::fabs(a[i]))), err = std::max(err, double(std::fabs(a[i] - c[i])));
  EXPECT_GT(scale, 0.0);
  EXPECT_LE(err, tol * scale) << "attention";

  // a wrong table is one clear error
  Tensor bad = Tensor::from_vector({B}, DType::I64, pos).to(dev);
  o.kv_table = bad;
  EXPECT_THROW(ops::attention(ctx, q2, kc2[big], vc2[big], o, out2), ShapeError);
}

}  // namespace nibble::test
