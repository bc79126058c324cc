// Tensor views, copies and conversions (host side); device memory comes through Storage.
#include "nibble/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "nibble/error.h"

namespace nibble {

using detail::str;

std::string Device::str() const { return is_cpu() ? "cpu" : detail::str("cuda:", index); }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw ShapeError(detail::str("negative dimension in shape ", shape_str(s)));
    if (d != 0 && n > INT64_MAX / d) throw ShapeError(detail::str("shape ", shape_str(s), " overflows int64"));
    n *= d;
  }
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device dev) {
  int64_t n = shape_numel(shape);
  return from_storage(Storage::allocate(size_t(dtype_nbytes(dtype, n)), dev), 0, shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device dev) {
  Tensor t = empty(shape, dtype, Device::cpu());
  if (t.nbytes()) std::memset(t.data_ptr(), 0, t.nbytes());
  return dev.is_cpu() ? t : t.to(dev);
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                            DType dtype) {
  Tensor t;
  t.numel_ = shape_numel(shape);
  size_t need = size_t(dtype_nbytes(dtype, t.numel_));
  if (byte_offset > storage->nbytes() || need > storage->nbytes() - byte_offset)
    throw ShapeError(detail::str("view of ", need, " bytes at offset ", byte_offset, " exceeds storage of ",
                         storage->nbytes(), " bytes"));
  t.storage_ = std::move(storage);
  t.offset_ = byte_offset;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

int64_t Tensor::size(int64_t d) const {
  int64_t nd = dim();
  if (d < 0) d += nd;
  if (d < 0 || d >= nd) throw ShapeError(detail::str("dimension ", d, " out of range for ", str()));
  return shape_[size_t(d)];
}

bool Tensor::is_contiguous() const {
  // A tensor without elements is contiguous whatever its strides (as in torch); the stride
  // walk below would otherwise reject fresh zero-size tensors such as [2, 0, 4].
  if (numel_ == 0) return true;
  int64_t s = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != s) return false;
    s *= shape_[i];
  }
  return true;
}

std::span<const uint8_t> Tensor::bytes() const {
  NIBBLE_CHECK(device().is_cpu() && is_contiguous(), "bytes() needs a contiguous host tensor");
  return {static_cast<const uint8_t*>(data_ptr()), nbytes()};
}

Tensor Tensor::view(const Shape& shape) const {
  if (!is_contiguous()) throw ShapeError(detail::str("view of a non-contiguous tensor ", str()));
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer >= 0) throw ShapeError("view: more than one -1 dimension");
      infer = int64_t(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel_ % known) throw ShapeError(detail::str("view: cannot infer ", shape_str(shape), " from ", str()));
    s[size_t(infer)] = numel_ / known;
  }
  if (shape_numel(s) != numel_) throw ShapeError(detail::str("view: ", shape_str(s), " does not fit ", str()));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  int64_t n = size(d);
  if (d < 0) d += dim();
  if (start < 0 || end > n || start > end)
    throw ShapeError(detail::str("slice [", start, ", ", end, ") of dimension ", d, " of ", str()));
  if (dtype_bits(dtype_) < 8) throw ShapeError("slice of a packed 4-bit tensor");
  Tensor t = *this;
  t.offset_ += size_t(start * strides_[size_t(d)] * dtype_bits(dtype_) / 8);
  t.shape_[size_t(d)] = end - start;
  t.numel_ = shape_numel(t.shape_);
  return t;
}

Tensor Tensor::select(int64_t d, int64_t i) const {
  if (d < 0) d += dim();
  Tensor t = slice(d, i, i + 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  if (a < 0) a += dim();
  if (b < 0) b += dim();
  if (a < 0 || b < 0 || a >= dim() || b >= dim()) throw ShapeError(detail::str("transpose dims out of range for ", str()));
  Tensor t = *this;
  std::swap(t.shape_[size_t(a)], t.shape_[size_t(b)]);
  std::swap(t.strides_[size_t(a)], t.strides_[size_t(b)]);
  return t;
}

namespace {
// Walks every element of a strided host tensor in row-major order, calling f(src_elem_index).
template <typename F>
void for_each_index(const Shape& shape, const Shape& strides, F&& f) {
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(shape.size(), 0);
  int64_t off = 0;
  for (int64_t k = 0; k < n; ++k) {
    f(off);
    for (size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.shape_ != shape_ || src.dtype_ != dtype_)
    throw ShapeError(detail::str("copy_from: ", src.str(), " into ", str()));
  if (src.is_contiguous() && is_contiguous()) {
    copy_bytes(data_ptr(), device(), src.data_ptr(), src.device(), nbytes());
    return;
  }
  if (!src.device().is_cpu() || !device().is_cpu())
    throw UnsupportedError("copy_from: strided copies are host-only; make the tensor contiguous first");
  NIBBLE_CHECK(is_contiguous(), "strided destination");
  size_t es = size_t(dtype_bits(dtype_) / 8);
  NIBBLE_CHECK(es > 0, "strided copy of a packed dtype");
  auto* dst = static_cast<char*>(data_ptr());
  const auto* s = static_cast<const char*>(src.data_ptr());
  for_each_index(src.shape_, src.strides_, [&](int64_t off) {
    std::memcpy(dst, s + off * int64_t(es), es);
    dst += es;
  });
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype_, dev);
  copy_bytes(out.data_ptr(), dev, src.data_ptr(), src.device(), nbytes());
  return out;
}

namespace {
bool is_integral(DType t) {
  DTypeKind k = traits(t).kind;
  return k == DTypeKind::SignedInt || k == DTypeKind::UnsignedInt || k == DTypeKind::Bool;
}

int64_t load_int(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::I64: return static_cast<const int64_t*>(p)[i];
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::I16: return static_cast<const int16_t*>(p)[i];
    case DType::I8: return static_cast<const int8_t*>(p)[i];
    default: return static_cast<const uint8_t*>(p)[i];  // U8, Bool
  }
}

// Narrowing integer stores wrap (two's complement), as torch's integer casts do.
void store_int(void* p, DType t, int64_t i, int64_t v) {
  switch (t) {
    case DType::I64: static_cast<int64_t*>(p)[i] = v; return;
    case DType::I32: static_cast<int32_t*>(p)[i] = int32_t(uint32_t(v)); return;
    case DType::I16: static_cast<int16_t*>(p)[i] = int16_t(uint16_t(v)); return;
    case DType::I8: static_cast<int8_t*>(p)[i] = int8_t(uint8_t(v)); return;
    case DType::U8: static_cast<uint8_t*>(p)[i] = uint8_t(v); return;
    default: static_cast<uint8_t*>(p)[i] = v != 0; return;  // Bool
  }
}

// Float -> integer: round half to even like store_from_f32; NaN and out-of-range values give
// INT64_MIN (what x86's conversion, and so torch on CPU, produces) instead of UB.
int64_t round_to_int(double v) {
  if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0)) return INT64_MIN;
  return int64_t(std::nearbyint(v));
}
}  // namespace

Tensor Tensor::to(DType dt) const {
  if (dt == dtype_) return *this;
  if (!device().is_cpu()) throw UnsupportedError("dtype conversion of a device tensor: copy to the host first");
  if (traits(dt).kind == DTypeKind::Packed4 || traits(dtype_).kind == DTypeKind::Packed4)
    throw UnsupportedError(detail::str("conversion between ", dtype_name(dtype_), " and ", dtype_name(dt)));
  Tensor src = contiguous();
  Tensor out = empty(shape_, dt);
  const void* s = src.data_ptr();
  void* d = out.data_ptr();
  const bool int_src = is_integral(dtype_), int_dst = is_integral(dt);
  // Integer sources are read exactly and f64 is read as f64, so no value takes a lossy f32
  // detour (an i32 of 2^24 + 1 widened to i64 stays 2^24 + 1).
  auto load_wide = [&](int64_t i) {
    return int_src ? double(load_int(s, dtype_, i))
           : dtype_ == DType::F64 ? static_cast<const double*>(s)[i]
                                  : double(load_as_f32(s, dtype_, i));
  };
  for (int64_t i = 0; i < numel_; ++i) {
    if (int_src && int_dst) store_int(d, dt, i, load_int(s, dtype_, i));
    else if (dt == DType::Bool) store_int(d, dt, i, load_wide(i) != 0.0);  // NaN is true, as in torch
    else if (int_dst) store_int(d, dt, i, round_to_int(load_wide(i)));
    else if (dt == DType::F64) static_cast<double*>(d)[i] = load_wide(i);
    else if (int_src) store_from_f32(d, dt, i, float(load_int(s, dtype_, i)));  // one rounding
    else store_from_f32(d, dt, i, dtype_ == DType::F64 ? float(load_wide(i)) : load_as_f32(s, dtype_, i));
  }
  return out;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return detail::str("Tensor(", dtype_name(dtype_), ", ", shape_str(shape_), ", ", device().str(), ")");
}

}  // namespace nibble
