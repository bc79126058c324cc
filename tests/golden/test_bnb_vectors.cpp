// Every case of $NIBBLE_FIXTURES/bnb/bnb_vectors.{json,safetensors} (bitsandbytes' CUDA
// kernels): the scalar reference and the dispatched CPU ops must reproduce packed bytes,
// absmax bits, nested state, the serialized quant_state entries and dequantized values
// bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/quant.h"
#include "nibble/safetensors.h"
#include "quant/reference.h"
#include "test_support.h"

using namespace nibble;

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

std::vector<nlohmann::json> cases_with_prefix(const std::string& prefix) {
  std::vector<nlohmann::json> out;
  for (const auto& c : vectors().index.at("cases"))
    if (c.at("name").get<std::string>().starts_with(prefix)) out.push_back(c);
  return out;
}

DType dtype_of(const std::string& torch_name) { return dtype_from_torch(torch_name).value(); }

// Byte-identical comparison, reporting the first differing byte.
::testing::AssertionResult same_bytes(const Tensor& a, const Tensor& b) {
  Tensor x = a.to(Device::cpu()).contiguous(), y = b.to(Device::cpu()).contiguous();
  if (x.dtype() != y.dtype() || x.numel() != y.numel())
    return ::testing::AssertionFailure() << x.str() << " vs " << y.str();
  auto p = x.bytes(), q = y.bytes();
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] != q[i])
      return ::testing::AssertionFailure() << "byte " << i << " of " << p.size() << ": " << int(p[i])
                                           << " vs " << int(q[i]);
  return ::testing::AssertionSuccess();
}

}  // namespace

TEST(BnbVectors, CodeTables) {
  const auto& f = vectors().file;
  EXPECT_TRUE(same_bytes(Tensor::from_vector<float>({16}, DType::F32, {nf4_code().begin(), nf4_code().end()}),
                         f.get("nf4_code")));
  EXPECT_TRUE(same_bytes(Tensor::from_vector<float>({16}, DType::F32, {fp4_code().begin(), fp4_code().end()}),
                         f.get("fp4_code")));
  std::vector<float> dyn(dynamic_map_signed().begin(), dynamic_map_signed().end());
  EXPECT_TRUE(same_bytes(Tensor::from_vector<float>({256}, DType::F32, dyn), f.get("dynamic_map_signed")));
}

TEST(BnbVectors, FourBitReference) {
  auto cases = cases_with_prefix("q4_");
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    std::string name = c.at("name");
    SCOPED_TRACE(name);
    const auto& f = vectors().file;
    Tensor x = f.get(name + ".input");
    DType qt = c.at("quant_type") == "nf4" ? DType::NF4 : DType::FP4;
    int64_t bs = c.at("blocksize"), n = x.numel(), nb = (n + bs - 1) / bs;
    Tensor packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8);
    Tensor absmax = Tensor::empty({nb}, DType::F32);
    quant::ref::quantize_4bit(x.data_ptr(), x.dtype(), n, bs, qt, packed.data<uint8_t>(), absmax.data<float>());
    EXPECT_TRUE(same_bytes(packed, f.get(name + ".packed")));
    if (c.at("double_quant")) {
      auto nq = quant::ref::double_quantize_absmax(absmax.data<float>(), nb);
      EXPECT_EQ(nq.offset, float(c.at("nested_offset").get<double>()));
      EXPECT_TRUE(same_bytes(Tensor::from_vector<uint8_t>({nb}, DType::U8, nq.q), f.get(name + ".qs.absmax")));
      EXPECT_TRUE(same_bytes(Tensor::from_vector<float>({int64_t(nq.absmax2.size())}, DType::F32, nq.absmax2),
                             f.get(name + ".qs.nested_absmax")));
    } else {
      EXPECT_TRUE(same_bytes(absmax, f.get(name + ".qs.absmax")));
    }
  }
}

TEST(BnbVectors, FourBitOpsAndStateDict) {
  auto cases = cases_with_prefix("q4_");
  ASSERT_EQ(cases.size(), 96u);
  for (const auto& c : cases) {
    std::string name = c.at("name");
    SCOPED_TRACE(name);
    const auto& f = vectors().file;
    Tensor x = f.get(name + ".input");
    ASSERT_EQ(x.dtype(), dtype_of(c.at("dtype")));
    DType qt = c.at("quant_type") == "nf4" ? DType::NF4 : DType::FP4;
    Quantized4 q = quantize_4bit(x, qt, c.at("blocksize"), c.at("double_quant"));
    EXPECT_TRUE(same_bytes(q.packed, f.get(name + ".packed")));
    EXPECT_EQ(q.packed.shape(), f.get(name + ".packed").shape());

    // the serialized state: same keys, dtypes, shapes and bytes (the JSON blob included)
    auto d = quant_state_to_dict(q.state);
    std::vector<std::string> keys;
    for (const auto& [k, v] : d) keys.push_back(k);
    EXPECT_EQ(keys, c.at("qs_keys").get<std::vector<std::string>>());
    for (const auto& [k, v] : d) {
      SCOPED_TRACE(k);
      Tensor want = f.get(name + ".qs." + k);
      EXPECT_EQ(v.shape(), want.shape());
      EXPECT_TRUE(same_bytes(v, want));
    }

    // dequantize ours and the fixture's serialized state: both equal bitsandbytes' dequant
    Tensor deq = dequantize_4bit(q.packed, q.state);
    EXPECT_EQ(deq.shape(), x.shape());
    EXPECT_TRUE(same_bytes(deq, f.get(name + ".dequant")));
    std::map<std::string, Tensor> fd;
    for (const auto& k : c.at("qs_keys")) fd[k] = f.get(name + ".qs." + k.get<std::string>());
    QuantState4 st = quant_state_from_dict(fd, name);
    EXPECT_EQ(st.blocksize, c.at("blocksize").get<int64_t>());
    EXPECT_EQ(st.nested, c.at("double_quant").get<bool>());
    EXPECT_TRUE(same_bytes(dequantize_4bit(f.get(name + ".packed"), st), f.get(name + ".dequant")));
  }
}

TEST(BnbVectors, Blockwise8) {
  auto cases = cases_with_prefix("q8b_");
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    std::string name = c.at("name");
    SCOPED_TRACE(name);
    const auto& f = vectors().file;
    Tensor x = f.get(name + ".input");
    EXPECT_TRUE(same_bytes(f.get(name + ".code"), f.get("dynamic_map_signed")));
    auto q = quantize_blockwise8(x, c.at("blocksize"));
    EXPECT_TRUE(same_bytes(q.packed, f.get(name + ".packed")));
    EXPECT_TRUE(same_bytes(q.absmax, f.get(name + ".absmax")));
    EXPECT_TRUE(same_bytes(dequantize_blockwise8(q), f.get(name + ".dequant")));
    // the reference alone, too
    int64_t n = x.numel(), bs = c.at("blocksize");
    std::vector<uint8_t> rq(static_cast<size_t>(n));
    std::vector<float> ra(size_t((n + bs - 1) / bs));
    quant::ref::quantize_blockwise8(x.data_ptr(), x.dtype(), n, bs, dynamic_map_signed().data(), rq.data(),
                                    ra.data());
    EXPECT_TRUE(same_bytes(Tensor::from_vector<uint8_t>({n}, DType::U8, rq), f.get(name + ".packed")));
  }
}

TEST(BnbVectors, Int8Vectorwise) {
  auto cases = cases_with_prefix("int8_");
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    std::string name = c.at("name");
    SCOPED_TRACE(name);
    const auto& f = vectors().file;
    float threshold = c.at("threshold").get<float>();
    auto r = int8_vectorwise_quant(f.get(name + ".input"), threshold);
    EXPECT_TRUE(same_bytes(r.CA, f.get(name + ".CA")));
    EXPECT_TRUE(same_bytes(r.SCA, f.get(name + ".SCA")));
    if (threshold > 0) {
      ASSERT_TRUE(f.contains(name + ".outlier_cols"));
      EXPECT_TRUE(same_bytes(r.outlier_cols, f.get(name + ".outlier_cols")));
    } else {
      EXPECT_FALSE(r.outlier_cols.defined());
    }
  }
}
