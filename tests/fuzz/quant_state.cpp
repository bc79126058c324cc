// bitsandbytes quant_state JSON blob ("quant_state.bitsandbytes__nf4|fp4", a uint8 tensor) ->
// QuantState4, beside absmax / quant_map / nested_* tensors shaped as the blob's own fields ask
// (so parsing goes past the tensor checks); an accepted state is dequantized (small shapes),
// serialized back and re-read.
#include <cstring>

#include "fuzz_common.h"
#include "nibble/quant.h"

namespace {

using nibble::DType;
using nibble::Tensor;

Tensor f32s(const float* p, int64_t n) {
  Tensor t = Tensor::empty({n}, DType::F32);
  std::memcpy(t.data_ptr(), p, size_t(n) * 4);
  return t;
}

// The block count the blob's shape and blocksize give, when small enough to build tensors for.
int64_t blocks_asked(const nlohmann::json& j) {
  try {
    // integers only: nlohmann's get<int64_t> of a float such as 1e300 is undefined behaviour
    const auto& jb = j.at("blocksize");
    const auto& js = j.at("shape");
    if (!jb.is_number_integer() || !js.is_array()) return 1;
    for (const auto& e : js)
      if (!e.is_number_integer()) return 1;
    int64_t bs = jb.get<int64_t>();
    auto shape = js.get<std::vector<int64_t>>();
    if (bs <= 0) return 1;
    int64_t n = nibble::shape_numel(shape);
    if (n > (int64_t(1) << 24)) return 1;
    return (n + bs - 1) / bs;
  } catch (const std::exception&) {
    return 1;
  }
}

}  // namespace

NIBBLE_FUZZ_ENTRY {
  auto peek = nibble::fuzz::parse_json(data, size);
  const bool fp4 = peek && peek->is_object() && peek->value("quant_type", nlohmann::json()) == "fp4";
  const bool nested = peek && peek->is_object() && peek->contains("nested_blocksize");
  const int64_t nb = peek && peek->is_object() ? blocks_asked(*peek) : 1;
  const DType qt = fp4 ? DType::FP4 : DType::NF4;

  std::map<std::string, Tensor> d;
  Tensor blob = Tensor::empty({int64_t(size)}, DType::U8);
  if (size) std::memcpy(blob.data_ptr(), data, size);
  d[std::string("quant_state.bitsandbytes__") + (fp4 ? "fp4" : "nf4")] = blob;
  d["quant_map"] = f32s(nibble::code_table_4bit(qt), 16);
  if (nested) {
    d["absmax"] = Tensor::zeros({nb}, DType::U8);
    d["nested_absmax"] = Tensor::zeros({(nb + 255) / 256}, DType::F32);
    d["nested_quant_map"] = f32s(nibble::dynamic_map_signed().data(), 256);
  } else {
    d["absmax"] = Tensor::zeros({nb}, DType::F32);
  }
  try {
    nibble::QuantState4 st = nibble::quant_state_from_dict(d, "fuzz");
    (void)st.state_bytes();
    const int64_t n = st.numel();
    if (n <= (int64_t(1) << 16)) {
      Tensor packed = Tensor::zeros({(n + 1) / 2, 1}, DType::U8);
      (void)nibble::dequantize_4bit(packed, st);
      (void)nibble::dequantize_absmax(st);
    }
    // What we write, we read back.
    std::string text = nibble::quant_state_json(st);
    nibble::QuantState4 again = nibble::quant_state_from_dict(nibble::quant_state_to_dict(st), "fuzz(again)");
    if (nibble::quant_state_json(again) != text) std::abort();
  } catch (const nibble::Error&) {
  }
  return 0;
}
