// safetensors header + tensor table: every offset, dtype and shape is validated before use, then
// every tensor's bytes are read (views over the input, widened to f32 where the dtype is a float
// kind), through the buffer parser and through SafetensorsFile::open on an in-memory file.
#include <sys/mman.h>

#include <cstring>
#include <memory>

#include "fuzz_common.h"
#include "nibble/safetensors.h"

uint64_t g_sink;  // keeps the reads

namespace {

// A checksum of every byte the view covers (ASan reports a view past the buffer).
uint64_t touch(const nibble::Tensor& t) {
  uint64_t sum = 0;
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i) sum += p[i];
  if (nibble::is_float(t.dtype())) {
    try {
      nibble::Tensor f = t.to(nibble::DType::F32);
      for (int64_t i = 0; i < f.numel(); ++i) sum += f.data<float>()[i] != 0;
    } catch (const nibble::UnsupportedError&) {  // float kinds with no host conversion
    }
  }
  return sum;
}

void check_table(const nibble::SafetensorsHeader& h, size_t size) {
  uint64_t prev_end = 0;
  for (const auto& t : h.tensors) {
    // The invariants parse_safetensors_header promises (abort: a finding).
    if (t.begin > t.end || t.begin < prev_end || h.data_start + t.end > size ||
        t.end - t.begin != uint64_t(nibble::dtype_nbytes(t.dtype, nibble::shape_numel(t.shape))))
      std::abort();
    prev_end = t.end;
  }
}

}  // namespace

NIBBLE_FUZZ_ENTRY {
  nibble::SafetensorsHeader h;
  try {
    h = nibble::parse_safetensors_header(data, size, "fuzz.safetensors");
  } catch (const nibble::Error&) {
    return 0;
  }
  check_table(h, size);
  auto copy = std::shared_ptr<uint8_t[]>(new uint8_t[size]);
  std::memcpy(copy.get(), data, size);
  auto storage = std::make_shared<nibble::Storage>(copy.get(), size, nibble::Device::cpu(), copy);
  uint64_t sum = 0;
  for (const auto& t : h.tensors)
    sum += touch(nibble::Tensor::from_storage(storage, h.data_start + size_t(t.begin), t.shape, t.dtype));

  // The mmap path: the same bytes as a file.
  int fd = memfd_create("fuzz.safetensors", 0);
  if (fd < 0) std::abort();
  if (::write(fd, data, size) != ssize_t(size)) std::abort();
  try {
    auto f = nibble::SafetensorsFile::open("/proc/self/fd/" + std::to_string(fd));
    if (f.names().size() != h.tensors.size()) std::abort();
    for (const std::string& n : f.names()) {
      sum += touch(f.get(n));
      f.release(n);
    }
  } catch (const nibble::Error&) {
    std::abort();  // the buffer parser accepted these bytes
  }
  ::close(fd);
  g_sink = sum;
  return 0;
}
