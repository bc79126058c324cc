// model.safetensors.index.json -> Checkpoint: the fuzzed index over a folder of two small real
// shards (tensors a, b in the first; c in the second), then every tensor it maps is read.
#include "fuzz_common.h"
#include "nibble/safetensors.h"

namespace {

const std::filesystem::path& folder() {
  static const std::filesystem::path dir = [] {
    const auto& d = nibble::fuzz::scratch_dir();
    auto vec = [](std::vector<float> v) {
      return nibble::Tensor::from_vector({int64_t(v.size())}, nibble::DType::F32, v);
    };
    nibble::save_safetensors(d / "model-00001-of-00002.safetensors", {{"a", vec({1, 2})}, {"b", vec({3})}});
    nibble::save_safetensors(d / "model-00002-of-00002.safetensors", {{"c", vec({4, 5, 6})}});
    return d;
  }();
  return dir;
}

}  // namespace

NIBBLE_FUZZ_ENTRY {
  const auto& dir = folder();
  nibble::fuzz::write_bytes(dir / "model.safetensors.index.json", data, size);
  try {
    auto c = nibble::Checkpoint::open(dir);
    float sum = 0;
    for (const std::string& n : c.names()) {
      nibble::Tensor t = c.get(n);
      for (int64_t i = 0; i < t.numel(); ++i) sum += t.data<float>()[i];
      (void)c.info(n);
      c.release(n);
    }
    (void)c.metadata();
    if (sum > 21) std::abort();  // no tensor read twice
  } catch (const nibble::Error&) {
  }
  return 0;
}
