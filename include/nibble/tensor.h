// Tensor: shape, strides (in elements), dtype, device and a shared Storage. A tensor either
// owns its bytes or is a view into someone else's: a region of an mmap'd safetensors file,
// a slice of another tensor, CUDA device memory — all through the same type. Copies between
// devices go through one function (copy_bytes) in the core allocator layer.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "nibble/dtype.h"
#include "nibble/error.h"

namespace nibble {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  std::string str() const;
  friend bool operator==(const Device&, const Device&) = default;
};

// True when this build has the CUDA backend and a device is visible.
bool cuda_available();
int cuda_device_count();

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);  // throws ShapeError on negative dims or int64 overflow

// A contiguous byte region plus whatever keeps it alive (a heap block, an mmap, a CUDA buffer).
class Storage {
 public:
  Storage(void* data, size_t nbytes, Device dev, std::shared_ptr<void> owner)
      : data_(data), nbytes_(nbytes), device_(dev), owner_(std::move(owner)) {}
  // 64-byte aligned host memory, or device memory on dev (uninitialized).
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device dev = Device::cpu());
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
  std::shared_ptr<void> owner_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor: defined() is false

  // Owning, uninitialized / zero-filled tensors.
  static Tensor empty(const Shape& shape, DType dtype, Device dev = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device dev = Device::cpu());
  // A contiguous view of existing memory kept alive by storage.
  static Tensor from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                             DType dtype);
  // Host tensor copied from a vector; T must match dtype's element size.
  template <typename T>
  static Tensor from_vector(const Shape& shape, DType dtype, const std::vector<T>& v);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  size_t nbytes() const { return size_t(dtype_nbytes(dtype_, numel_)); }
  size_t byte_offset() const { return offset_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  bool is_contiguous() const;

  void* data_ptr() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <typename T>
  T* data() const { return static_cast<T*>(data_ptr()); }
  // Bytes of a contiguous host tensor.
  std::span<const uint8_t> bytes() const;

  // Views (share storage).
  Tensor view(const Shape& shape) const;            // contiguous only; one dim may be -1
  Tensor slice(int64_t d, int64_t start, int64_t end) const;
  Tensor select(int64_t d, int64_t i) const;        // drops dimension d
  Tensor flatten() const { return view({numel_}); }
  Tensor transpose(int64_t a, int64_t b) const;

  // Copies.
  Tensor contiguous() const;                 // self if already contiguous
  Tensor clone() const;                      // always a fresh contiguous copy
  Tensor to(Device dev) const;               // host <-> device copy (self if already there)
  Tensor to(DType dtype) const;              // host conversion of float/int kinds
  void copy_from(const Tensor& src);         // same shape, dtype; any devices

  std::string str() const;  // "Tensor(bf16, [4096, 4096], cpu)"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes from storage start
  Shape shape_, strides_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
};

Shape contiguous_strides(const Shape& shape);

// Copies n bytes between any two devices (host<->host, host<->CUDA, CUDA<->CUDA).
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n);

template <typename T>
Tensor Tensor::from_vector(const Shape& shape, DType dtype, const std::vector<T>& v) {
  Tensor t = empty(shape, dtype);
  if (dtype_nbytes(dtype, t.numel()) != int64_t(v.size() * sizeof(T)))
    throw ShapeError("Tensor::from_vector: element size or count does not match shape/dtype");
  if (!v.empty()) std::memcpy(t.data_ptr(), v.data(), v.size() * sizeof(T));
  return t;
}

}  // namespace nibble
