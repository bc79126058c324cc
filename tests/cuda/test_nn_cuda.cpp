// The CUDA forward ops (backends/cuda/nn_cuda.h) against the CPU backend (backends/cpu/nn_cpu.h)
// on fresh random inputs (seed printed): odd sizes, strided rows, every attention variant (GQA,
// q_offset, sliding window, ALiBi, softcap, head dims up to 256, f32/f16/bf16 K/V: the CPU runs on
// K/V rounded to that dtype). Tolerance: relative to the largest |ref|. Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "backends/cpu/nn_cpu.h"
#include "batched_decode_check.h"
#include "nibble/dtype.h"
#include "nibble/tensor.h"
#include "test_support.h"
#ifdef NIBBLE_WITH_CUDA
#include <cuda_runtime.h>

#include "backends/cuda/attention_tc.h"
#include "backends/cuda/nn_cuda.h"
#endif

using namespace nibble;

#ifdef NIBBLE_WITH_CUDA
namespace {

#define CK(x) ASSERT_EQ((x), cudaSuccess) << #x

// A device buffer of n bytes, freed on scope exit.
struct Dev {
  void* p = nullptr;
  explicit Dev(size_t n) {
    if (cudaMalloc(&p, std::max<size_t>(n, 16)) != cudaSuccess) p = nullptr;
  }
  ~Dev() { cudaFree(p); }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <class T>
void up(const Dev& d, const std::vector<T>& h) {
  ASSERT_EQ(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}
template <class T>
std::vector<T> down(const Dev& d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(h.data(), d.p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

std::vector<float> randn(size_t n, std::mt19937_64& rng, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Bytes of v in dtype dt, and v itself rounded to dt.
std::vector<uint8_t> encode(std::vector<float>& v, DType dt) {
  std::vector<uint8_t> b(size_t(dtype_nbytes(dt, int64_t(v.size()))));
  for (size_t i = 0; i < v.size(); ++i) {
    store_from_f32(b.data(), dt, int64_t(i), v[i]);
    v[i] = load_as_f32(b.data(), dt, int64_t(i));
  }
  return b;
}

::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref, double tol) {
  double mx = 0.0;
  for (float r : ref) mx = std::max(mx, double(std::fabs(r)));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = std::fabs(double(got[i]) - double(ref[i]));
    if (!(e <= tol * std::max(mx, 1e-30)))
      return ::testing::AssertionFailure() << "element " << i << " of " << ref.size() << ": got " << got[i]
                                           << " want " << ref[i] << " (max |ref| " << mx << ")";
  }
  return ::testing::AssertionSuccess();
}

const cuda::Launch kL{};

TEST(NnCuda, NormsActivationsElementwise) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (int64_t M : {1, 3, 17})
    for (int64_t C : {1, 7, 96, 4097})
      for (DType wdt : {DType::F32, DType::BF16, DType::F16}) {
        SCOPED_TRACE(::testing::Message() << "M " << M << " C " << C << " " << dtype_name(wdt));
        auto x = randn(size_t(M * C), rng, 3.0f);
        auto w = randn(size_t(C), rng), b = randn(size_t(C), rng);
        auto wb = encode(w, wdt), bb = encode(b, wdt);
        Dev dx(x.size() * 4), dw(wb.size()), db(bb.size()), dout(x.size() * 4);
        up(dx, x), up(dw, wb), up(db, bb);
        std::vector<float> ref(x.size());
        for (bool unit : {false, true}) {
          cpu::rms_norm(x.data(), M, C, wb.data(), wdt, 1e-6f, unit, ref.data());
          cuda::rms_norm(kL, dx.as<float>(), M, C, dw.p, wdt, 1e-6f, unit, dout.as<float>());
          EXPECT_TRUE(close(down<float>(dout, x.size()), ref, 1e-5)) << "rms_norm unit " << unit;
          // the residual add fused in front: h = x + r written back, out = rms_norm(h)
          auto r = randn(x.size(), rng, 2.0f), h = x;
          for (size_t i = 0; i < h.size(); ++i) h[i] += r[i];
          cpu::rms_norm(h.data(), M, C, wb.data(), wdt, 1e-6f, unit, ref.data());
          Dev dh(x.size() * 4), dr(x.size() * 4);
          up(dh, x), up(dr, r);
          cuda::add_rms_norm(kL, dh.as<float>(), dr.as<float>(), M, C, dw.p, wdt, 1e-6f, unit,
                             dout.as<float>());
          EXPECT_EQ(down<float>(dh, x.size()), h) << "add_rms_norm's sum";
          EXPECT_TRUE(close(down<float>(dout, x.size()), ref, 1e-5)) << "add_rms_norm unit " << unit;
        }
        for (bool bias : {false, true}) {
          cpu::layer_norm(x.data(), M, C, wb.data(), wdt, bias ? bb.data() : nullptr, wdt, 1e-5f, ref.data());
          cuda::layer_norm(kL, dx.as<float>(), M, C, dw.p, wdt, bias ? db.p : nullptr, wdt, 1e-5f,
                           dout.as<float>());
          EXPECT_TRUE(close(down<float>(dout, x.size()), ref, 1e-5)) << "layer_norm bias " << bias;
        }
      }
  // 4096: the four-column gated and add kernels (rows and sizes multiples of 4)
  for (int64_t n : {1, 33, 4096, 100003}) {
    auto x = randn(size_t(n), rng, 4.0f), y = randn(size_t(n), rng);
    Dev dx(size_t(n) * 4), dy(size_t(n) * 4), dout(size_t(n) * 4);
    for (int a = 0; a < 4; ++a) {
      auto ref = x;
      cpu::activate(ref.data(), n, cpu::Act(a));
      up(dx, x);
      cuda::activate(kL, dx.as<float>(), n, cuda::Act(a));
      // relative to the input's scale: GELU's left tail (x * Phi(x), x near -3) cancels, so the
      // GPU's erff/tanhf differ from the CPU's by a few 1e-5 of a tiny output (seen with n = 1)
      float xmax = 1.0f;
      for (float v : x) xmax = std::max(xmax, std::fabs(v));
      std::vector<float> scaled_ref = ref, scaled_got = down<float>(dx, size_t(n));
      for (size_t i = 0; i < ref.size(); ++i) scaled_ref[i] /= xmax, scaled_got[i] /= xmax;
      scaled_ref.push_back(1.0f), scaled_got.push_back(1.0f);  // the scale the tolerance refers to
      EXPECT_TRUE(close(scaled_got, scaled_ref, 1e-5)) << "activate " << a << " n " << n;
      // gated, gate and up interleaved in one [rows, 2F] buffer (fused gate_up)
      const int64_t rows = 3, F = n;
      auto gu = randn(size_t(rows * 2 * F), rng, 3.0f);
      std::vector<float> g(size_t(rows * F)), u(size_t(rows * F)), gref(size_t(rows * F));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t f = 0; f < F; ++f)
          g[size_t(r * F + f)] = gu[size_t(r * 2 * F + f)],
                           u[size_t(r * F + f)] = gu[size_t(r * 2 * F + F + f)];
      cpu::gated_activation(g.data(), u.data(), rows * F, cpu::Act(a), gref.data());
      Dev dgu(gu.size() * 4), dg(gref.size() * 4);
      up(dgu, gu);
      cuda::gated_activation(kL, dgu.as<float>(), 2 * F, dgu.as<float>() + F, 2 * F, rows, F, cuda::Act(a),
                             dg.as<float>());
      EXPECT_TRUE(close(down<float>(dg, gref.size()), gref, 1e-5)) << "gated " << a << " F " << F;
    }
    up(dx, x), up(dy, y);
    cuda::add(kL, dx.as<float>(), dy.as<float>(), n);
    auto sum = down<float>(dx, size_t(n));
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sum[size_t(i)], x[size_t(i)] + y[size_t(i)]) << i;
    up(dx, x);
    cuda::softcap(kL, dx.as<float>(), n, 30.0f);
    std::vector<float> sref(x.size());
    for (size_t i = 0; i < x.size(); ++i) sref[i] = std::tanh(x[i] / 30.0f) * 30.0f;
    EXPECT_TRUE(close(down<float>(dx, size_t(n)), sref, 1e-6));
  }
}

// rope_kv_write: q and k rotated in place, k and v stored to the caches in their dtype at a
// device-side or host row; the same values as cpu::apply_rope followed by the conversion.
TEST(NnCuda, RopeKvWriteEqualsRopeThenCopies) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  int cases = 0;
  for (int64_t T : {1, 5, 20, 41})      // a block a head (decode), a block a token (from 16)
    for (int64_t rot_frac : {0, 1, 2})  // no rope, full, half
      for (DType dt : {DType::F32, DType::BF16, DType::F16})
        for (bool dev_row : {false, true}) {
          const int64_t Hq = 6, Hkv = 2, D = 64, cap = 48, row0 = 3;
          const int64_t rot = rot_frac == 0 ? 0 : D / rot_frac;
          auto q = randn(size_t(T * Hq * D), rng), k = randn(size_t(T * Hkv * D), rng),
               v = randn(size_t(T * Hkv * D), rng);
          auto c = randn(size_t(T * std::max<int64_t>(rot / 2, 1)), rng), sn = randn(c.size(), rng);
          auto qr = q, kr = k;
          if (rot) {
            cpu::apply_rope(qr.data(), T, Hq, D, c.data(), sn.data(), rot);
            cpu::apply_rope(kr.data(), T, Hkv, D, c.data(), sn.data(), rot);
          }
          const size_t cbytes = size_t(dtype_nbytes(dt, cap * Hkv * D));
          std::vector<uint8_t> kref(cbytes, 0), vref(cbytes, 0);
          for (int64_t i = 0; i < T * Hkv * D; ++i) {
            store_from_f32(kref.data(), dt, row0 * Hkv * D + i, kr[size_t(i)]);
            store_from_f32(vref.data(), dt, row0 * Hkv * D + i, v[size_t(i)]);
          }
          Dev dq(q.size() * 4), dk(k.size() * 4), dv(v.size() * 4), dc(c.size() * 4), ds(sn.size() * 4),
              dkc(cbytes), dvc(cbytes), drow(8);
          up(dq, q), up(dk, k), up(dv, v), up(dc, c), up(ds, sn), up(drow, std::vector<int64_t>{row0});
          CK(cudaMemset(dkc.p, 0, cbytes));
          CK(cudaMemset(dvc.p, 0, cbytes));
          cuda::RopeKv a{};
          a.q = dq.as<float>(), a.ldq = Hq * D, a.k = dk.as<float>(), a.ldk = Hkv * D, a.v = dv.as<float>();
          a.ldv = Hkv * D, a.T = T, a.Hq = Hq, a.Hkv = Hkv, a.D = D, a.rot_dim = rot;
          a.cos = rot ? dc.as<float>() : nullptr, a.sin = rot ? ds.as<float>() : nullptr;
          a.kc = dkc.p, a.vc = dvc.p, a.ldc = Hkv * D;
          a.row0_dev = dev_row ? drow.as<int64_t>() : nullptr, a.row0 = dev_row ? 0 : row0;
          cuda::rope_kv_write(kL, a, dt);
          EXPECT_EQ(down<float>(dq, q.size()), qr) << "q";
          EXPECT_EQ(down<float>(dk, k.size()), kr) << "k";
          EXPECT_EQ(down<uint8_t>(dkc, cbytes), kref) << "k cache " << dtype_name(dt);
          EXPECT_EQ(down<uint8_t>(dvc, cbytes), vref) << "v cache " << dtype_name(dt);
          ++cases;
        }
  EXPECT_EQ(cases, 4 * 3 * 3 * 2);
}

TEST(NnCuda, EmbeddingCopyRopeArgmaxLse) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const int64_t Vn = 53, C = 37, R = 9, off = 3;
    auto tab = randn(size_t(Vn * C), rng);
    auto tb = encode(tab, dt);
    std::vector<int64_t> ids(R);
    for (auto& i : ids) i = int64_t(rng() % uint64_t(Vn - off));
    Dev dt_(tb.size()), di(ids.size() * 8), dout(size_t(R * C) * 4);
    up(dt_, tb), up(di, ids);
    cuda::embedding(kL, dt_.p, dt, C, di.as<int64_t>(), R, off, 0.5f, dout.as<float>());
    auto got = down<float>(dout, size_t(R * C));
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c)
        ASSERT_EQ(got[size_t(r * C + c)], tab[size_t((ids[size_t(r)] + off) * C + c)] * 0.5f)
            << r << "," << c;
    // copy_rows: strided f32 -> dt, a shape of the element-wise kernel and one of the
    // four-column kernel (columns and strides multiples of 4)
    for (const auto& [rows, cols, lds, ldd] : {std::array<int64_t, 4>{5, 23, 31, 29}, {6, 40, 48, 44}}) {
      SCOPED_TRACE("copy_rows " + std::to_string(cols) + " of " + std::to_string(lds) + " -> " +
                   std::to_string(ldd));
      auto src = randn(size_t(rows * lds), rng);
      Dev ds(src.size() * 4), dd(size_t(dtype_nbytes(dt, rows * ldd)));
      up(ds, src);
      std::vector<uint8_t> poison(size_t(dtype_nbytes(dt, rows * ldd)), 0x5a);
      up(dd, poison);
      cuda::copy_rows(kL, ds.as<float>(), lds, rows, cols, dd.p, dt, ldd);
      auto gb = down<uint8_t>(dd, poison.size());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < ldd; ++c) {
          std::vector<uint8_t> want(size_t(dtype_nbytes(dt, 1)), 0x5a);
          if (c < cols) store_from_f32(want.data(), dt, 0, src[size_t(r * lds + c)]);
          const size_t es = want.size(), at = size_t(r * ldd + c) * es;
          ASSERT_TRUE(std::equal(want.begin(), want.end(), gb.begin() + long(at))) << r << "," << c;
        }
      // copy_rows from dt: the dt rows just written back to f32 (strided both ways), exactly
      Dev back(size_t(rows * lds) * 4);
      up(back, std::vector<float>(size_t(rows * lds), -7.0f));
      cuda::copy_rows(kL, dd.p, dt, ldd, rows, cols, back.p, DType::F32, lds);
      auto fb = down<float>(back, size_t(rows * lds));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < lds; ++c) {
          const float want = c < cols ? load_as_f32(gb.data(), dt, r * ldd + c) : -7.0f;
          ASSERT_EQ(fb[size_t(r * lds + c)], want) << "from " << dtype_name(dt) << " " << r << "," << c;
        }
    }
  }
  // rope, partial rotary, strided tokens
  for (int64_t D : {64, 80, 128})
    for (int64_t rot : {D, D / 2}) {
      const int64_t T = 7, H = 3, ldx = H * D + 5;
      auto x = randn(size_t(T * ldx), rng);
      auto c = randn(size_t(T * rot / 2), rng), s = randn(size_t(T * rot / 2), rng);
      std::vector<float> ref(size_t(T * H * D));
      for (int64_t t = 0; t < T; ++t) std::copy_n(x.begin() + t * ldx, H * D, ref.begin() + t * H * D);
      cpu::apply_rope(ref.data(), T, H, D, c.data(), s.data(), rot);
      Dev dx(x.size() * 4), dc(c.size() * 4), dsn(s.size() * 4);
      up(dx, x), up(dc, c), up(dsn, s);
      cuda::apply_rope(kL, dx.as<float>(), ldx, T, H, D, dc.as<float>(), dsn.as<float>(), rot);
      auto got = down<float>(dx, x.size());
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t e = 0; e < H * D; ++e)
          ASSERT_EQ(got[size_t(t * ldx + e)], ref[size_t(t * H * D + e)]) << "D " << D << " rot " << rot;
        for (int64_t e = H * D; e < ldx; ++e) ASSERT_EQ(got[size_t(t * ldx + e)], x[size_t(t * ldx + e)]);
      }
    }
  // argmax (with ties) and log-sum-exp
  for (int64_t V : {1, 5, 1000, 151937}) {
    const int64_t rows = 4;
    auto x = randn(size_t(rows * V), rng, 5.0f);
    for (int64_t r = 0; r < rows; ++r) {  // a tie: the first maximum wins
      auto b = x.begin() + r * V;
      const auto m = std::max_element(b, b + V);
      x[size_t(r * V + int64_t(rng() % uint64_t(V)))] = *m;
    }
    Dev dx(x.size() * 4), di(size_t(rows) * 8), dl(size_t(rows) * 4);
    up(dx, x);
    cuda::argmax_rows(kL, dx.as<float>(), rows, V, di.as<int64_t>());
    cuda::log_sum_exp_rows(kL, dx.as<float>(), rows, V, dl.as<float>());
    auto gi = down<int64_t>(di, size_t(rows));
    auto gl = down<float>(dl, size_t(rows));
    for (int64_t r = 0; r < rows; ++r) {
      auto b = x.begin() + r * V;
      EXPECT_EQ(gi[size_t(r)], std::max_element(b, b + V) - b) << "V " << V;
      const double m = *std::max_element(b, b + V);
      double s = 0.0;
      for (int64_t c = 0; c < V; ++c) s += std::exp(double(b[c]) - m);
      EXPECT_NEAR(gl[size_t(r)], m + std::log(s), 1e-5 * std::max(1.0, std::fabs(m))) << "V " << V;
    }
  }
}

struct AttnCase {
  int64_t T, S, Hq, Hkv, D, q_offset, window;
  float softcap;
  bool alibi;
  DType kv;
  bool tc = false;  // the case takes the tensor-core prefill kernel
  // one decode row whose position q_offset is read on the device (a replayed decode graph): S is
  // then the cache's capacity, of which the first q_offset + 1 rows are attended over
  bool device_pos = false;
};

void check_attention(const AttnCase& c, std::mt19937_64& rng) {
  SCOPED_TRACE(::testing::Message() << "T " << c.T << " S " << c.S << " Hq " << c.Hq << " Hkv " << c.Hkv
                                    << " D " << c.D << " off " << c.q_offset << " win " << c.window << " cap "
                                    << c.softcap << " alibi " << c.alibi << " kv " << dtype_name(c.kv)
                                    << " device pos " << c.device_pos);
  const int64_t D = c.D, ldq = c.Hq * D + 3, ldk = c.Hkv * D + 8, ldv = c.Hkv * D + 16;
  auto q = randn(size_t(c.T * ldq), rng), k = randn(size_t(c.S * ldk), rng),
       v = randn(size_t(c.S * ldv), rng);
  auto kb = encode(k, c.kv), vb = encode(v, c.kv);
  std::vector<float> slopes(size_t(c.Hq));
  for (int64_t h = 0; h < c.Hq; ++h) slopes[size_t(h)] = std::pow(2.0f, -8.0f * float(h + 1) / float(c.Hq));
  // CPU on contiguous copies
  std::vector<float> qc(size_t(c.T * c.Hq * D)), kc(size_t(c.S * c.Hkv * D)), vc(kc.size());
  for (int64_t t = 0; t < c.T; ++t) std::copy_n(q.begin() + t * ldq, c.Hq * D, qc.begin() + t * c.Hq * D);
  for (int64_t s = 0; s < c.S; ++s) {
    std::copy_n(k.begin() + s * ldk, c.Hkv * D, kc.begin() + s * c.Hkv * D);
    std::copy_n(v.begin() + s * ldv, c.Hkv * D, vc.begin() + s * c.Hkv * D);
  }
  Dev dq(q.size() * 4), dk(kb.size()), dv(vb.size()), ds(slopes.size() * 4), dout(qc.size() * 4);
  up(dq, q), up(dk, kb), up(dv, vb), up(ds, slopes);
  std::vector<float> poison(qc.size(), NAN);
  up(dout, poison);
  cuda::Attention a;
  a.T = c.T, a.S = c.S, a.Hq = c.Hq, a.Hkv = c.Hkv, a.D = D, a.Dv = D, a.scale = 1.0f / std::sqrt(float(D));
  a.q_offset = c.q_offset, a.window = c.window, a.softcap = c.softcap,
  a.alibi = c.alibi ? ds.as<float>() : nullptr;
  a.q = dq.as<float>(), a.ldq = ldq, a.k = dk.p, a.v = dv.p, a.kv_dtype = c.kv, a.ldk = ldk, a.ldv = ldv;
  a.out = dout.as<float>();
  Dev dpos(8);
  if (c.device_pos) {
    ASSERT_EQ(c.T, 1);
    up(dpos, std::vector<int64_t>{c.q_offset});
    a.pos = dpos.as<int64_t>();
  }
  // tensor cores round q and the softmax weights to the cache dtype: the reference takes q so rounded
  const bool tc = cuda::attention_prefill_tc_fits(a);
  EXPECT_EQ(tc, c.tc) << "which kernel the case is meant for";
  if (tc) encode(qc, c.kv);
  cpu::AttentionShape sh;
  sh.T = c.T, sh.S = c.device_pos ? c.q_offset + 1 : c.S, sh.Hq = c.Hq, sh.Hkv = c.Hkv, sh.D = D, sh.Dv = D;
  sh.scale = a.scale, sh.q_offset = c.q_offset, sh.window = c.window, sh.softcap = c.softcap;
  sh.alibi = c.alibi ? slopes.data() : nullptr;
  std::vector<float> ref(qc.size());
  cpu::attention(qc.data(), kc.data(), vc.data(), sh, ref.data());
  const size_t wb = cuda::attention_workspace_bytes(a);
  Dev dw(wb);
  cuda::Launch l;
  l.workspace = dw.p, l.workspace_bytes = wb;
  cuda::attention(l, a);
  const auto got = down<float>(dout, ref.size());
  if (!tc) {
    EXPECT_TRUE(close(got, ref, 2e-5));
    return;
  }
  // Each weight p_j is rounded once (relative error <= u, u = 2^-9 bf16, 2^-12 f16), so an output
  // is off by at most u * max |v| and, the roundings being independent, by about u / sqrt(3) of the
  // output's scale in the mean square (a key missed or counted twice is ~1 / sqrt(S) of it).
  const double u = c.kv == DType::BF16 ? 0x1p-9 : 0x1p-12;
  double vmax = 0.0, e2 = 0.0, r2 = 0.0, emax = 0.0;
  for (float x : vc) vmax = std::max(vmax, double(std::fabs(x)));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = double(got[i]) - double(ref[i]);
    e2 += e * e, r2 += double(ref[i]) * double(ref[i]);
    emax = std::max(emax, std::isnan(e) ? INFINITY : std::fabs(e));
  }
  EXPECT_LE(emax, 1.01 * u * vmax + 1e-5);
  EXPECT_LE(std::sqrt(e2), 2.0 * u * std::sqrt(r2)) << "root mean square error against the output's";
}

TEST(NnCuda, Attention) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  for (DType kv : {DType::F32, DType::BF16, DType::F16}) {
    const bool half = kv != DType::F32;  // a 16-bit cache: prefill (16 or more rows) on tensor cores
    for (int64_t T : {1, 2, 5, 16, 100, 513})
      for (int64_t off : {int64_t(0), int64_t(37)})
        check_attention({T, T + off, 4, 2, 64, off, 0, 0, false, kv, half && T >= 16}, rng);
    // head dims a multiple of a lane's run of 4 (8 above 128) take the split kernel's vector loads,
    // 50 and 196 its element loads
    for (int64_t D : {64, 80, 96, 128, 256, 40, 200, 36, 50, 196})
      check_attention({3, 300, 8, 2, D, 297, 0, 0, false, kv}, rng);
    check_attention({1, 4999, 8, 1, 128, 4998, 0, 0, false, kv}, rng);  // long decode, many splits
    check_attention({16, 2000, 4, 4, 128, 1984, 0, 0, false, kv, half}, rng);
    check_attention({5, 700, 4, 2, 128, 695, 256, 0, false, kv}, rng);  // sliding window
    // a window over a short cache with GQA, and a decode row at the last of 512 keys
    check_attention({4, 302, 8, 2, 128, 298, 100, 0, false, kv}, rng);
    check_attention({1, 512, 4, 4, 128, 511, 0, 0, false, kv}, rng);
    check_attention({100, 100, 4, 2, 64, 0, 17, 0, false, kv, half}, rng);
    check_attention({9, 509, 8, 4, 256, 500, 0, 50.0f, false, kv}, rng);  // Gemma-2 softcap
    check_attention({7, 333, 6, 6, 96, 326, 0, 0, true, kv}, rng);        // ALiBi
    check_attention({50, 50, 4, 1, 80, 0, 0, 0, true, kv, half}, rng);
    // prefill shapes for the tensor-core kernel: every head dim it takes, GQA 8:1, a window over
    // several key tiles, soft-capping, chunked prefill after a long cache, and D = 256 (not taken)
    for (int64_t D : {32, 80, 96, 128}) check_attention({77, 207, 6, 3, D, 130, 0, 0, false, kv, half}, rng);
    check_attention({200, 200, 8, 1, 128, 0, 0, 0, false, kv, half}, rng);
    check_attention({300, 1000, 4, 2, 128, 700, 100, 0, false, kv, half}, rng);
    check_attention({64, 200, 4, 2, 128, 136, 0, 30.0f, false, kv, half}, rng);
    check_attention({130, 130, 4, 2, 64, 0, 0, 0, true, kv, half}, rng);
    check_attention({40, 40, 2, 1, 256, 0, 0, 0, false, kv}, rng);
    // decode with the position on the device and the cache filled anywhere from its first row to
    // its last (the splits are sized for the capacity): GQA, head dims on both sides of 128, a
    // window, soft-capping, ALiBi
    for (int64_t pos : {0, 5, 130, 4998})
      check_attention({1, 4999, 8, 2, 128, pos, 0, 0, false, kv, false, true}, rng);
    check_attention({1, 600, 4, 4, 80, 77, 0, 0, false, kv, false, true}, rng);
    check_attention({1, 1000, 8, 2, 256, 700, 0, 0, false, kv, false, true}, rng);
    check_attention({1, 1000, 8, 2, 128, 700, 256, 0, false, kv, false, true}, rng);
    check_attention({1, 509, 8, 4, 64, 300, 0, 50.0f, false, kv, false, true}, rng);
    check_attention({1, 333, 6, 6, 96, 200, 0, 0, true, kv, false, true}, rng);
  }
}

}  // namespace
#endif

// The table forms of a batched decode step (one launch a layer for every sequence's KV write and
// attention) against one call a sequence: caches and rotated q/k bit for bit, attention within
// f32 summation order (the splits differ with the row count).
TEST(NnCuda, BatchedDecodeTableEqualsPerSequence) {
  SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    test::check_batched_decode(Device::cuda(0), dt, test::fresh_seed(), 1e-5);
}
