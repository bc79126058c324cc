// Tensor: views share storage and compute offsets/strides like torch; copies (contiguous,
// clone, copy_from) walk strides in row-major order; to(dtype) converts exactly where the
// target can hold the value. Every strided result is checked against a plain index formula.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "nibble/tensor.h"
#include "test_support.h"

using namespace nibble;

namespace {

// [0, 1, 2, ...] as f32 in the given shape.
Tensor iota(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i);
  return t;
}

// Element at a multi-index of any host f32 tensor, through its strides.
float at(const Tensor& t, std::initializer_list<int64_t> idx) {
  int64_t off = 0;
  size_t d = 0;
  for (int64_t i : idx) off += i * t.strides()[d++];
  return t.data<float>()[off];
}

std::vector<float> values(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

}  // namespace

TEST(Tensor, ConstructionAndBasics) {
  Tensor u;
  EXPECT_FALSE(u.defined());
  EXPECT_EQ(u.str(), "Tensor(undefined)");
  Tensor t = Tensor::zeros({2, 3}, DType::BF16);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.nbytes(), 12u);
  EXPECT_EQ(t.dim(), 2);
  EXPECT_EQ(t.size(-1), 3);
  EXPECT_EQ(t.strides(), (Shape{3, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.str(), "Tensor(bf16, [2, 3], cpu)");
  for (uint8_t b : t.bytes()) EXPECT_EQ(b, 0);
  EXPECT_THROW(t.size(2), ShapeError);
  EXPECT_THROW(t.size(-3), ShapeError);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 64, 0u);  // allocator alignment

  Tensor s = Tensor::empty({}, DType::F64);  // scalar
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.nbytes(), 8u);
  EXPECT_EQ(Tensor::empty({4, 0}, DType::F32).nbytes(), 0u);
  EXPECT_EQ(Tensor::empty({7}, DType::NF4).nbytes(), 4u);  // packed: rounds up

  EXPECT_THROW(Tensor::empty({-1}, DType::F32), ShapeError);
  EXPECT_THROW(Tensor::empty({int64_t(1) << 40, int64_t(1) << 40}, DType::F32), ShapeError);
  EXPECT_THROW(Tensor::from_vector<float>({3}, DType::F32, {1, 2}), ShapeError);
  EXPECT_THROW(Tensor::from_vector<float>({2}, DType::F16, {1, 2}), ShapeError);
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_str({2, 3}), "[2, 3]");
  EXPECT_EQ(contiguous_strides({2, 0, 4}), (Shape{4, 4, 1}));
}

TEST(Tensor, FromStorageChecksBounds) {
  auto st = Storage::allocate(64);
  Tensor t = Tensor::from_storage(st, 16, {4}, DType::F32);
  EXPECT_EQ(static_cast<char*>(t.data_ptr()) - static_cast<char*>(st->data()), 16);
  EXPECT_EQ(Tensor::from_storage(st, 64, {0}, DType::F32).numel(), 0);  // empty view at the end
  EXPECT_THROW(Tensor::from_storage(st, 56, {4}, DType::F32), ShapeError);
  EXPECT_THROW(Tensor::from_storage(st, 65, {0}, DType::F32), ShapeError);
}

TEST(Tensor, ViewAndFlatten) {
  Tensor t = iota({2, 3, 4});
  Tensor v = t.view({6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  EXPECT_EQ(v.storage(), t.storage());
  EXPECT_EQ(at(v, {5, 3}), 23.0f);
  EXPECT_EQ(t.flatten().shape(), (Shape{24}));
  EXPECT_EQ(t.view({-1}).shape(), (Shape{24}));
  EXPECT_THROW(t.view({5, -1}), ShapeError);
  EXPECT_THROW(t.view({-1, -1}), ShapeError);
  EXPECT_THROW(t.view({25}), ShapeError);
  EXPECT_THROW(t.transpose(0, 1).view({24}), ShapeError);  // non-contiguous
  Tensor e = Tensor::empty({0, 3}, DType::F32);
  EXPECT_EQ(e.view({3, 0}).shape(), (Shape{3, 0}));
  EXPECT_THROW(e.view({-1, 0}), ShapeError);  // cannot infer from 0
}

TEST(Tensor, SliceSelectTranspose) {
  Tensor t = iota({3, 4, 5});
  Tensor s = t.slice(1, 1, 3);  // [3, 2, 5]
  EXPECT_EQ(s.shape(), (Shape{3, 2, 5}));
  EXPECT_EQ(s.strides(), (Shape{20, 5, 1}));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.storage(), t.storage());
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t k = 0; k < 5; ++k) EXPECT_EQ(at(s, {i, j, k}), float(i * 20 + (j + 1) * 5 + k));
  EXPECT_TRUE(t.slice(0, 1, 2).is_contiguous());
  EXPECT_EQ(t.slice(-1, 2, 5).shape(), (Shape{3, 4, 3}));
  EXPECT_EQ(t.slice(0, 3, 3).numel(), 0);
  EXPECT_THROW(t.slice(0, 2, 4), ShapeError);
  EXPECT_THROW(t.slice(0, -1, 2), ShapeError);
  EXPECT_THROW(t.slice(0, 2, 1), ShapeError);
  EXPECT_THROW(t.slice(3, 0, 1), ShapeError);
  EXPECT_THROW(Tensor::empty({8}, DType::NF4).slice(0, 0, 2), ShapeError);

  Tensor row = t.select(0, 2);  // [4, 5]
  EXPECT_EQ(row.shape(), (Shape{4, 5}));
  EXPECT_EQ(at(row, {0, 0}), 40.0f);
  Tensor col = t.select(-1, 4);  // [3, 4]
  EXPECT_EQ(col.shape(), (Shape{3, 4}));
  EXPECT_EQ(at(col, {2, 3}), float(2 * 20 + 3 * 5 + 4));
  EXPECT_THROW(t.select(0, 3), ShapeError);

  Tensor tr = t.transpose(0, 2);  // [5, 4, 3]
  EXPECT_EQ(tr.shape(), (Shape{5, 4, 3}));
  EXPECT_EQ(tr.strides(), (Shape{1, 5, 20}));
  EXPECT_EQ(at(tr, {4, 3, 2}), at(t, {2, 3, 4}));
  EXPECT_EQ(t.transpose(-1, 0).shape(), tr.shape());
  EXPECT_THROW(t.transpose(0, 3), ShapeError);
  EXPECT_TRUE(t.transpose(1, 1).is_contiguous());
}

TEST(Tensor, ContiguousCloneCopyFrom) {
  Tensor t = iota({3, 4});
  EXPECT_EQ(t.contiguous().data_ptr(), t.data_ptr());  // no copy when already contiguous
  Tensor tr = t.transpose(0, 1);
  Tensor c = tr.contiguous();
  EXPECT_NE(c.data_ptr(), t.data_ptr());
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(values(c), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));

  Tensor k = t.clone();
  EXPECT_NE(k.data_ptr(), t.data_ptr());
  k.data<float>()[0] = 99;
  EXPECT_EQ(t.data<float>()[0], 0.0f);  // a clone shares nothing

  // Nested views: a slice of a transpose of a slice.
  Tensor big = iota({4, 6});
  Tensor v = big.slice(1, 1, 5).transpose(0, 1).slice(1, 1, 3);  // [4, 2]: big[1 + j... ]
  std::vector<float> expect;
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 2; ++j) expect.push_back(float((j + 1) * 6 + (i + 1)));
  EXPECT_EQ(values(v), expect);

  Tensor dst = Tensor::zeros({4, 2}, DType::F32);
  dst.copy_from(v);
  EXPECT_EQ(values(dst), expect);
  EXPECT_THROW(dst.copy_from(iota({2, 4})), ShapeError);
  EXPECT_THROW(dst.copy_from(Tensor::zeros({4, 2}, DType::F16)), ShapeError);

  // Zero-size and scalar copies.
  EXPECT_EQ(Tensor::empty({0, 5}, DType::F32).transpose(0, 1).contiguous().numel(), 0);
  Tensor sc = Tensor::from_vector<float>({}, DType::F32, {3.5f});
  EXPECT_EQ(sc.clone().data<float>()[0], 3.5f);
  // Byte-sized and 8-byte elements through the strided path.
  Tensor i64 = Tensor::from_vector<int64_t>({2, 2}, DType::I64, {1, 2, 3, 4});
  Tensor i64t = i64.transpose(0, 1).contiguous();
  EXPECT_EQ(std::vector<int64_t>(i64t.data<int64_t>(), i64t.data<int64_t>() + 4), (std::vector<int64_t>{1, 3, 2, 4}));
  Tensor u8 = Tensor::from_vector<uint8_t>({2, 3}, DType::U8, {1, 2, 3, 4, 5, 6});
  Tensor u8t = u8.transpose(0, 1).contiguous();
  EXPECT_EQ(std::vector<uint8_t>(u8t.data<uint8_t>(), u8t.data<uint8_t>() + 6), (std::vector<uint8_t>{1, 4, 2, 5, 3, 6}));
}

TEST(Tensor, ToDTypeFloatKinds) {
  Tensor f = Tensor::from_vector<float>({6}, DType::F32, {0.0f, -1.5f, 3.140625f, 65504.0f, 1e-8f, -0.0f});
  Tensor h = f.to(DType::F16);
  EXPECT_EQ(h.dtype(), DType::F16);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(h.data<uint16_t>()[i], f32_to_f16(f.data<float>()[i])) << i;
  Tensor b = f.to(DType::BF16);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(b.data<uint16_t>()[i], f32_to_bf16(f.data<float>()[i])) << i;
  Tensor back = b.to(DType::F32);
  EXPECT_EQ(back.data<float>()[1], -1.5f);
  Tensor d = f.to(DType::F64);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(d.data<double>()[i], double(f.data<float>()[i]));
  EXPECT_EQ(f.to(DType::F32).data_ptr(), f.data_ptr());  // same dtype: no copy
  Tensor e = f.to(DType::F8_E4M3);
  EXPECT_EQ(e.data<uint8_t>()[1], f32_to_f8e4m3(-1.5f));
  EXPECT_EQ(e.data<uint8_t>()[3], f32_to_f8e4m3(65504.0f));  // beyond E4M3's range: NaN as torch

  // Strided input converts in logical order.
  Tensor m = Tensor::from_vector<float>({2, 2}, DType::F32, {1, 2, 3, 4});
  Tensor mt = m.transpose(0, 1).to(DType::F64);
  EXPECT_EQ(std::vector<double>(mt.data<double>(), mt.data<double>() + 4), (std::vector<double>{1, 3, 2, 4}));
  EXPECT_THROW(f.to(DType::NF4), UnsupportedError);
  EXPECT_THROW(Tensor::empty({2}, DType::FP4).to(DType::F32), UnsupportedError);
}

TEST(Tensor, ToDTypeIntegersAreExact) {
  const int64_t big = (int64_t(1) << 53) + 1;  // not representable in f32 nor f64
  Tensor i64 = Tensor::from_vector<int64_t>({3}, DType::I64, {-7, 123456789, big});
  Tensor f64 = i64.to(DType::F64);
  EXPECT_EQ(f64.data<double>()[1], 123456789.0);
  Tensor i32 = Tensor::from_vector<int32_t>({3}, DType::I32, {16777217, -2147483647 - 1, 2147483647});
  Tensor w = i32.to(DType::I64);  // widening must be exact (no f32 detour)
  EXPECT_EQ(std::vector<int64_t>(w.data<int64_t>(), w.data<int64_t>() + 3),
            (std::vector<int64_t>{16777217, -2147483648LL, 2147483647}));
  Tensor wd = i32.to(DType::F64);
  EXPECT_EQ(wd.data<double>()[0], 16777217.0);
  Tensor u8 = Tensor::from_vector<uint8_t>({3}, DType::U8, {0, 200, 255});
  Tensor u8w = u8.to(DType::I16);
  EXPECT_EQ(u8w.data<int16_t>()[2], 255);
  Tensor fl = Tensor::from_vector<float>({4}, DType::F32, {2.5f, -3.5f, 0.4f, 7.0f});
  Tensor r = fl.to(DType::I32);  // round half to even, as nearbyint
  EXPECT_EQ(std::vector<int32_t>(r.data<int32_t>(), r.data<int32_t>() + 4), (std::vector<int32_t>{2, -4, 0, 7}));
  Tensor bo = fl.to(DType::Bool);
  EXPECT_EQ(bo.data<uint8_t>()[2], 1);
  Tensor bf = Tensor::from_vector<uint8_t>({2}, DType::Bool, {0, 1}).to(DType::F32);
  EXPECT_EQ(bf.data<float>()[1], 1.0f);
}

TEST(Tensor, DeviceCopiesWithoutCuda) {
  Tensor t = iota({4});
  EXPECT_EQ(t.to(Device::cpu()).data_ptr(), t.data_ptr());
  EXPECT_EQ(t.device(), Device::cpu());
  EXPECT_EQ(Device::cuda(1).str(), "cuda:1");
  if (cuda_available()) {
    Tensor g = t.to(Device::cuda());
    EXPECT_TRUE(g.device().is_cuda());
    EXPECT_EQ(values(g.to(Device::cpu())), values(t));
  } else {
    EXPECT_THROW(t.to(Device::cuda()), UnsupportedError);
  }
}
