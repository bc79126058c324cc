// The CUDA quantization backend against the scalar reference, byte for byte: fresh random
// inputs (seed printed) of many sizes, every 4-bit blocksize, f32/f16/bf16, NF4/FP4, double
// quantization on and off, zero blocks, NaN/inf/outliers, odd and partial sizes, unaligned
// views; blockwise 8-bit at assorted blocksizes; the device-side torch mean on many lengths;
// and every 4-bit/8-bit case of the bitsandbytes fixtures. Skips without a CUDA device.
//
// Float outputs compare bit for bit except that any NaN equals any NaN: the reference's NaN
// from 0 * inf carries x86's default payload (sign set), the GPU's the canonical 0x7fffffff.
// The reference models bitsandbytes' fast-math kernels (flushed denormals, approximate
// reciprocal), so kind-4 inputs exercise those paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/quant.h"
#include "nibble/safetensors.h"
#include "quant/reference.h"
#include "quant/torch_mean.h"
#include "test_support.h"
#ifdef NIBBLE_WITH_CUDA
#include "backends/cuda/quant_cuda.h"
#endif

using namespace nibble;

namespace {

Tensor host(const Tensor& t) {
  return t.to(Device::cpu()).contiguous();
}

bool is_nan_elem(const uint8_t* p, DType dt) {
  if (dt == DType::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return std::isnan(f);
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (dt == DType::F16) return (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
  return (h & 0x7f80) == 0x7f80 && (h & 0x7f);
}

// Bytes of `got` (any device) equal `want` (host bytes); float dtypes: NaN matches NaN.
::testing::AssertionResult same(const Tensor& got, const void* want, size_t nbytes, DType dt) {
  Tensor g = host(got);
  if (g.nbytes() != nbytes)
    return ::testing::AssertionFailure() << g.str() << " has " << g.nbytes() << " bytes, want " << nbytes;
  const uint8_t* a = static_cast<const uint8_t*>(g.data_ptr());
  const uint8_t* b = static_cast<const uint8_t*>(want);
  const size_t es = is_float(dt) ? size_t(dtype_nbytes(dt, 1)) : 1;
  for (size_t i = 0; i < nbytes; i += es) {
    if (std::memcmp(a + i, b + i, es) == 0) continue;
    if (es > 1 && is_nan_elem(a + i, dt) && is_nan_elem(b + i, dt)) continue;
    auto hex = [es](const uint8_t* p) {
      std::string h;
      char buf[3];
      for (size_t k = es; k-- > 0;) std::snprintf(buf, sizeof buf, "%02x", p[k]), h += buf;
      return h;
    };
    return ::testing::AssertionFailure() << "element " << i / es << " of " << nbytes / es << ": got 0x"
                                         << hex(a + i) << " want 0x" << hex(b + i);
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult same(const Tensor& got, const Tensor& want) {
  Tensor w = host(want);
  if (got.dtype() != w.dtype()) return ::testing::AssertionFailure() << got.str() << " vs " << w.str();
  return same(got, w.data_ptr(), w.nbytes(), w.dtype());
}

template <typename T>
::testing::AssertionResult same(const Tensor& got, const std::vector<T>& want, DType dt) {
  return same(got, want.data(), want.size() * sizeof(T), dt);
}

// normal(0, 0.05) values; kind 1: a run of zeros covering whole blocks; kind 2: outliers,
// signed zeros, ±inf, NaN, tiny and (f32) denormal values at random places; kind 3: a whole
// block of NaN; kind 4: the first block scaled to ~1e-37 (f32: products that flush to zero),
// another all denormal.
Tensor awkward_input(int64_t n, DType dt, std::mt19937_64& rng, int kind, int64_t bs) {
  Tensor x = test::random_normal({n}, dt, rng, 0.05f);
  std::uniform_int_distribution<int64_t> pos(0, n - 1);
  if (kind == 1)
    for (int64_t i = 0; i < std::min<int64_t>(n, 2 * bs + 7); ++i) store_from_f32(x.data_ptr(), dt, i, 0.0f);
  if (kind == 2)
    for (int k = 0; k < 14; ++k) {
      const float v[] = {20.0f, -0.0f, 0.0f,   INFINITY, -INFINITY, NAN,     1e-30f,
                         -7.0f, -NAN,  1e-40f, 65504.0f, -3e38f,    -1e-39f, 6e-8f};
      store_from_f32(x.data_ptr(), dt, pos(rng), v[k]);
    }
  if (kind == 3)
    for (int64_t i = 0; i < std::min<int64_t>(n, bs); ++i) store_from_f32(x.data_ptr(), dt, i, NAN);
  if (kind == 4 && dt == DType::F32) {
    float* p = x.data<float>();
    for (int64_t i = 0; i < std::min<int64_t>(n, bs); ++i) p[i] *= 2e-36f;
    for (int64_t i = bs; i < std::min<int64_t>(n, 2 * bs); ++i) p[i] *= 1e-38f;
  }
  return x;
}

// One 4-bit case: quantize on the device (double quant on and off), compare every output
// with the reference, then dequantize to each float dtype and compare again.
void check_4bit_case(const Tensor& x_host, const Tensor& x_dev, DType qt, int64_t bs) {
  const int64_t n = x_host.numel(), nb = (n + bs - 1) / bs;
  std::vector<uint8_t> packed((size_t(n) + 1) / 2, 0xAA);
  std::vector<float> absmax(static_cast<size_t>(nb));
  quant::ref::quantize_4bit(x_host.data_ptr(), x_host.dtype(), n, bs, qt, packed.data(), absmax.data());
  for (bool dq : {false, true}) {
    SCOPED_TRACE(dq ? "double quant" : "plain absmax");
    Quantized4 q = quantize_4bit(x_dev, qt, bs, dq);
    ASSERT_TRUE(q.packed.device().is_cuda());
    ASSERT_TRUE(same(q.packed, packed, DType::U8));
    std::vector<float> absmax_eff = absmax;  // what dequantization sees
    if (dq) {
      auto nq = quant::ref::double_quantize_absmax(absmax.data(), nb);
      ASSERT_EQ(f32_bits(q.state.offset), f32_bits(nq.offset)) << q.state.offset << " vs " << nq.offset;
      ASSERT_TRUE(same(q.state.absmax, nq.q, DType::U8));
      ASSERT_TRUE(same(q.state.nested_absmax, nq.absmax2, DType::F32));
      quant::ref::dequantize_nested_absmax(nq.q.data(), nq.absmax2.data(), nq.offset, nb, absmax_eff.data());
      ASSERT_TRUE(same(dequantize_absmax(q.state), absmax_eff, DType::F32));
    } else {
      ASSERT_TRUE(same(q.state.absmax, absmax, DType::F32));
    }
    for (DType out_dt : {DType::F32, DType::F16, DType::BF16}) {
      SCOPED_TRACE(dtype_name(out_dt));
      QuantState4 st = q.state;
      st.dtype = out_dt;
      Tensor want = Tensor::empty({n}, out_dt);
      quant::ref::dequantize_4bit(packed.data(), absmax_eff.data(), n, bs, qt, want.data_ptr(), out_dt);
      Tensor got = dequantize_4bit(q.packed, st);
      ASSERT_TRUE(got.device().is_cuda());
      ASSERT_TRUE(same(got, want));
    }
  }
}

}  // namespace

TEST(QuantCuda, FourBitMatchesReference) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::printf("FourBitMatchesReference seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (DType qt : {DType::NF4, DType::FP4})
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (int64_t bs = 32; bs <= 4096; bs *= 2)
        for (int kind = 0; kind < 5; ++kind) {
          int64_t n = std::uniform_int_distribution<int64_t>(1, 40000)(rng);
          if (kind == 0)
            n = std::max<int64_t>(bs, n / bs * bs) + (n % 2);  // whole blocks, sometimes an odd tail
          if (kind >= 3) n = std::max(n, 2 * bs);
          SCOPED_TRACE(testing::Message() << dtype_name(qt) << " " << dtype_name(dt) << " bs=" << bs
                                          << " n=" << n << " kind=" << kind);
          Tensor x = awkward_input(n, dt, rng, kind, bs);
          check_4bit_case(x, x.to(Device::cuda()), qt, bs);
          if (HasFatalFailure()) return;
        }
}

TEST(QuantCuda, FourBitSmallOddLargeAndUnaligned) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::printf("FourBitSmallOddLargeAndUnaligned seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  // tiny sizes, sizes around tile edges (2048/4096 elements per CTA tile), a multi-wave size
  const int64_t sizes[] = {1, 2, 3, 7, 8, 9, 15, 17, 31, 33, 4095, 4097, 8191, 8193, 65537, 3 * 1048576 + 5};
  for (int64_t n : sizes)
    for (int64_t bs : {int64_t(32), int64_t(64), int64_t(256), int64_t(4096)})
      for (DType dt : {DType::BF16, DType::F32}) {
        SCOPED_TRACE(testing::Message() << dtype_name(dt) << " bs=" << bs << " n=" << n);
        Tensor x = awkward_input(n, dt, rng, n > 1000 ? 2 : 0, bs);
        check_4bit_case(x, x.to(Device::cuda()), DType::NF4, bs);
        if (HasFatalFailure()) return;
      }
  // A view one element into a device buffer: not 16-byte aligned, so the scalar load path.
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (int64_t bs : {int64_t(64), int64_t(512)}) {
      const int64_t n = 50001;
      SCOPED_TRACE(testing::Message() << "unaligned " << dtype_name(dt) << " bs=" << bs);
      Tensor big = awkward_input(n + 1, dt, rng, 0, bs);
      Tensor x_dev = big.to(Device::cuda()).slice(0, 1, n + 1);
      check_4bit_case(host(x_dev), x_dev, DType::FP4, bs);
      if (HasFatalFailure()) return;
    }
}

// Sizes beyond one wave of the persistent quantize kernel (each CTA then prefetches its next
// group while coding the current one), and the same with one CTA per group.
TEST(QuantCuda, FourBitMultiWave) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::printf("FourBitMultiWave seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  struct Case {
    DType dt, qt;
    int64_t bs;
    const char* grid;
  };
  const Case cases[] = {{DType::BF16, DType::NF4, 64, ""},
                        {DType::F32, DType::NF4, 4096, ""},
                        {DType::F16, DType::FP4, 512, ""},
                        {DType::BF16, DType::NF4, 32, ""},
                        {DType::BF16, DType::NF4, 64, "full"}};
  for (const Case& c : cases) {
    const int64_t n = 9500003;
    SCOPED_TRACE(testing::Message() << dtype_name(c.qt) << " " << dtype_name(c.dt) << " bs=" << c.bs
                                    << " grid=" << c.grid);
    if (*c.grid) setenv("NIBBLE_CUDA_QUANT4_GRID", c.grid, 1);
    Tensor x = awkward_input(n, c.dt, rng, 2, c.bs);
    check_4bit_case(x, x.to(Device::cuda()), c.qt, c.bs);
    unsetenv("NIBBLE_CUDA_QUANT4_GRID");
    if (HasFatalFailure()) return;
  }
}

TEST(QuantCuda, Blockwise8MatchesReference) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::printf("Blockwise8MatchesReference seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const std::vector<float> code(dynamic_map_signed().begin(), dynamic_map_signed().end());
  for (int64_t bs : {1, 7, 32, 64, 100, 256, 1000, 2048, 4096, 5000})
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (int kind = 0; kind < 5; ++kind) {
        int64_t n = std::uniform_int_distribution<int64_t>(1, 30000)(rng);
        if (kind >= 3) n = std::max(n, 2 * bs);
        SCOPED_TRACE(testing::Message() << dtype_name(dt) << " bs=" << bs << " n=" << n << " kind=" << kind);
        Tensor x = awkward_input(n, dt, rng, kind, bs);
        const int64_t nb = (n + bs - 1) / bs;
        std::vector<uint8_t> q(static_cast<size_t>(n));
        std::vector<float> absmax(static_cast<size_t>(nb));
        quant::ref::quantize_blockwise8(x.data_ptr(), dt, n, bs, code.data(), q.data(), absmax.data());
        QuantizedBlockwise8 r = quantize_blockwise8(x.to(Device::cuda()), bs);
        ASSERT_TRUE(same(r.packed, q, DType::U8));
        ASSERT_TRUE(same(r.absmax, absmax, DType::F32));
        for (DType out_dt : {DType::F32, DType::F16, DType::BF16}) {
          SCOPED_TRACE(dtype_name(out_dt));
          r.dtype = out_dt;
          Tensor want = Tensor::empty({n}, out_dt);
          quant::ref::dequantize_blockwise8(q.data(), absmax.data(), code.data(), n, bs, want.data_ptr(),
                                            out_dt);
          ASSERT_TRUE(same(dequantize_blockwise8(r), want));
        }
      }
}

#ifdef NIBBLE_WITH_CUDA
// The device-side torch mean (and the rest of double quantization) on absmax-like vectors of
// many lengths, including both sides of every launch-shape switch (128 elements: vector loads;
// 130561: several CTAs) and large ones.
TEST(QuantCuda, DoubleQuantOffsetMatchesTorchMeanEmulation) {
  SKIP_WITHOUT_CUDA();
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::printf("DoubleQuantOffsetMatchesTorchMeanEmulation seed %llu\n",
              static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  std::vector<int64_t> sizes = {1,      2,      3,      4,       5,       31,         32,    33,
                                127,    128,    129,    255,     256,     257,        511,   512,
                                513,    1000,   2047,   2048,    4096,    65535,      65536, 130560,
                                130561, 131072, 262144, 1000003, 2000000, 4194304 + 3};
  for (int i = 0; i < 40; ++i) sizes.push_back(std::uniform_int_distribution<int64_t>(1, 300000)(rng));
  for (int64_t nb : sizes) {
    SCOPED_TRACE(testing::Message() << "nb=" << nb);
    Tensor a = test::random_normal({nb}, DType::F32, rng, 0.05f);
    float* p = a.data<float>();
    for (int64_t i = 0; i < nb; ++i) p[i] = std::fabs(p[i]);
    Tensor a_dev = a.to(Device::cuda());
    Tensor q = Tensor::empty({nb}, DType::U8, Device::cuda());
    Tensor a2 = Tensor::empty({(nb + 255) / 256}, DType::F32, Device::cuda());
    const float off =
        cuda::double_quantize_absmax(a_dev.data<float>(), nb, q.data<uint8_t>(), a2.data<float>());
    auto want = quant::ref::double_quantize_absmax(p, nb);
    ASSERT_EQ(f32_bits(off), f32_bits(quant::torch_cuda_mean_f32(p, nb)));
    ASSERT_EQ(f32_bits(off), f32_bits(want.offset));
    ASSERT_TRUE(same(q, want.q, DType::U8));
    ASSERT_TRUE(same(a2, want.absmax2, DType::F32));
  }
}
#endif

namespace {

struct Vectors {
  nlohmann::json index;
  SafetensorsFile file;
};

const Vectors& vectors() {
  static const Vectors v = [] {
    auto dir = test::fixtures_root() / "bnb";
    std::ifstream f(dir / "bnb_vectors.json");
    if (!f) throw IoError("cannot open " + (dir / "bnb_vectors.json").string());
    return Vectors{nlohmann::json::parse(f), SafetensorsFile::open(dir / "bnb_vectors.safetensors")};
  }();
  return v;
}

}  // namespace

// Every bitsandbytes fixture case through the GPU: packed bytes, (nested) absmax, offset and
// dequantized values equal bitsandbytes' own CUDA output, for our quantization and for the
// fixture's packed data and state uploaded to the device.
TEST(QuantCuda, BnbFixtureVectors) {
  SKIP_WITHOUT_CUDA();
  const auto& f = vectors().file;
  int n4 = 0, n8 = 0;
  for (const auto& c : vectors().index.at("cases")) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    if (name.starts_with("q4_")) {
      ++n4;
      Tensor x = f.get(name + ".input").to(Device::cuda());
      DType qt = c.at("quant_type") == "nf4" ? DType::NF4 : DType::FP4;
      const bool dq = c.at("double_quant");
      Quantized4 q = quantize_4bit(x, qt, c.at("blocksize"), dq);
      EXPECT_TRUE(same(q.packed, f.get(name + ".packed")));
      EXPECT_TRUE(same(q.state.absmax, f.get(name + ".qs.absmax")));
      if (dq) {
        EXPECT_EQ(double(q.state.offset), c.at("nested_offset").get<double>());
        EXPECT_TRUE(same(q.state.nested_absmax, f.get(name + ".qs.nested_absmax")));
      }
      EXPECT_TRUE(same(dequantize_4bit(q.packed, q.state), f.get(name + ".dequant")));
      // the fixture's own state (bitsandbytes' absmax / nested absmax / offset) on the device
      QuantState4 st = q.state;
      st.absmax = f.get(name + ".qs.absmax").to(Device::cuda());
      if (dq) {
        st.nested_absmax = f.get(name + ".qs.nested_absmax").to(Device::cuda());
        st.offset = float(c.at("nested_offset").get<double>());
      }
      EXPECT_TRUE(
          same(dequantize_4bit(f.get(name + ".packed").to(Device::cuda()), st), f.get(name + ".dequant")));
    } else if (name.starts_with("q8b_")) {
      ++n8;
      auto r = quantize_blockwise8(f.get(name + ".input").to(Device::cuda()), c.at("blocksize"));
      EXPECT_TRUE(same(r.packed, f.get(name + ".packed")));
      EXPECT_TRUE(same(r.absmax, f.get(name + ".absmax")));
      EXPECT_TRUE(same(dequantize_blockwise8(r), f.get(name + ".dequant")));
    }
  }
  EXPECT_EQ(n4, 96);
  EXPECT_GT(n8, 0);
}
