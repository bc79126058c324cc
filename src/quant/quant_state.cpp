// QuantState4 <-> bitsandbytes state-dict entries. bitsandbytes serializes a 4-bit weight as
// tensors (absmax, quant_map, nested_*) plus one uint8 tensor holding the UTF-8 JSON of the
// non-tensor fields, keyed "quant_state.bitsandbytes__<quant_type>". The JSON is Python's
// json.dumps of a dict in insertion order, so we write it with the same key order and float
// repr; when reading, blocksize/nesting/type come from that JSON, never from config.json.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "io/pyjson.h"
#include "io/read_file.h"
#include "nibble/error.h"
#include "nibble/quant.h"

namespace nibble {

using detail::str;

int64_t QuantState4::state_bytes() const {
  int64_t b = absmax.defined() ? int64_t(absmax.nbytes()) : 0;
  b += 16 * 4;  // quant_map
  if (nested) b += int64_t(nested_absmax.nbytes()) + 256 * 4 + 4;
  return b;
}

namespace {

const char* torch_name(DType t) {
  return traits(t).torch;
}

Tensor f32_vector(const float* p, int64_t n) {
  Tensor t = Tensor::empty({n}, DType::F32);
  std::memcpy(t.data_ptr(), p, size_t(n) * 4);
  return t;
}

std::string blob_key(DType quant_type) {
  return std::string("quant_state.bitsandbytes__") + (quant_type == DType::NF4 ? "nf4" : "fp4");
}

}  // namespace

std::string quant_state_json(const QuantState4& st) {
  nlohmann::ordered_json j;
  j["quant_type"] = st.quant_type == DType::NF4 ? "nf4" : "fp4";
  j["blocksize"] = st.blocksize;
  j["dtype"] = torch_name(st.dtype);
  j["shape"] = st.shape;
  if (st.nested) {
    j["nested_blocksize"] = st.nested_blocksize;
    j["nested_dtype"] = torch_name(st.nested_dtype);
    j["nested_offset"] = double(st.offset);  // Python: offset.item() -> float64 of the f32 value
  }
  return io::python_json_dumps(j);
}

std::map<std::string, Tensor> quant_state_to_dict(const QuantState4& st) {
  std::map<std::string, Tensor> d;
  Tensor absmax = st.absmax.to(Device::cpu());
  d["absmax"] = absmax;
  d["quant_map"] = f32_vector(code_table_4bit(st.quant_type), 16);
  if (st.nested) {
    d["nested_absmax"] = st.nested_absmax.to(Device::cpu());
    d["nested_quant_map"] = f32_vector(dynamic_map_signed().data(), 256);
  }
  std::string js = quant_state_json(st);
  Tensor blob = Tensor::empty({int64_t(js.size())}, DType::U8);
  std::memcpy(blob.data_ptr(), js.data(), js.size());
  d[blob_key(st.quant_type)] = blob;
  return d;
}

namespace {

const Tensor& need(const std::map<std::string, Tensor>& d, const std::string& key, const std::string& where) {
  auto it = d.find(key);
  if (it == d.end()) throw FormatError(str(where, ": missing quantization state entry '", key, "'"));
  return it->second;
}

void expect(const Tensor& t, DType dt, const Shape& shape, const std::string& what) {
  if (t.dtype() != dt || t.shape() != shape)
    throw FormatError(str(what, ": expected ", dtype_name(dt), " ", shape_str(shape), ", found ",
                          dtype_name(t.dtype()), " ", shape_str(t.shape())));
}

// A JSON integer that fits int64 (nlohmann's get<int64_t> of 1e300 is undefined behaviour).
bool is_int64(const nlohmann::json& v) {
  return v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX));
}

template <typename T>
T json_field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) throw FormatError(str(where, ": quant_state JSON lacks '", key, "'"));
  const nlohmann::json& v = j.at(key);
  bool ints = true;  // integer fields hold JSON integers only
  if constexpr (std::is_same_v<T, int64_t>) ints = is_int64(v);
  if constexpr (std::is_same_v<T, Shape>)
    ints =
        v.is_array() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& e) { return is_int64(e); });
  if (!ints) throw FormatError(str(where, ": quant_state JSON field '", key, "' is not an integer"));
  try {
    return v.get<T>();
  } catch (const nlohmann::json::exception&) {
    throw FormatError(str(where, ": quant_state JSON field '", key, "' has the wrong type"));
  }
}

DType float_dtype(const std::string& name, const std::string& where, const char* field) {
  auto dt = dtype_from_torch(name);
  if (!dt || (*dt != DType::F32 && *dt != DType::F16 && *dt != DType::BF16))
    throw FormatError(str(where, ": quant_state JSON field '", field, "' = '", name,
                          "' is not float32, float16 or bfloat16"));
  return *dt;
}

}  // namespace

QuantState4 quant_state_from_dict(const std::map<std::string, Tensor>& d, const std::string& where) {
  std::string key;
  int found = 0;
  for (const auto& [k, v] : d)
    if (k.starts_with("quant_state.")) {
      key = k;
      ++found;
    }
  if (found != 1)
    throw FormatError(
        str(where, ": expected exactly one quant_state.bitsandbytes__nf4|fp4 entry, found ", found));
  const Tensor& blob = d.at(key);
  if (blob.dtype() != DType::U8 || blob.dim() != 1)
    throw FormatError(str(where, ".", key, ": expected a 1-D uint8 tensor"));
  Tensor hb = blob.to(Device::cpu()).contiguous();
  std::string text(reinterpret_cast<const char*>(hb.data_ptr()), hb.nbytes());
  nlohmann::json j;
  try {
    j = io::parse_json(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(str(where, ".", key, ": not a JSON object (", e.what(), ")"));
  }
  if (!j.is_object()) throw FormatError(str(where, ".", key, ": not a JSON object"));
  std::string w = str(where, ".", key);

  QuantState4 st;
  auto qt = json_field<std::string>(j, "quant_type", w);
  if (qt == "nf4")
    st.quant_type = DType::NF4;
  else if (qt == "fp4")
    st.quant_type = DType::FP4;
  else
    throw FormatError(str(w, ": quant_type '", qt, "' is not nf4 or fp4"));
  if (key != blob_key(st.quant_type)) throw FormatError(str(w, ": key does not match quant_type '", qt, "'"));
  st.blocksize = json_field<int64_t>(j, "blocksize", w);
  if (!valid_blocksize_4bit(st.blocksize))
    throw FormatError(str(w, ": blocksize ", st.blocksize, " is not a power of two in 32..4096"));
  st.dtype = float_dtype(json_field<std::string>(j, "dtype", w), w, "dtype");
  st.shape = json_field<Shape>(j, "shape", w);
  int64_t n;
  try {
    n = shape_numel(st.shape);
  } catch (const ShapeError& e) {
    throw FormatError(str(w, ": shape: ", e.what()));
  }
  int64_t nb = n / st.blocksize + (n % st.blocksize != 0);  // no overflow near INT64_MAX

  st.nested = d.count("nested_absmax") > 0;
  Tensor absmax = need(d, "absmax", where);
  expect(absmax, st.nested ? DType::U8 : DType::F32, {nb}, str(where, ".absmax"));
  st.absmax = absmax;
  const Tensor& qmap = need(d, "quant_map", where);
  expect(qmap, DType::F32, {16}, str(where, ".quant_map"));
  Tensor qm = qmap.to(Device::cpu()).contiguous();
  if (std::memcmp(qm.data_ptr(), code_table_4bit(st.quant_type), 64) != 0)
    throw FormatError(str(where, ".quant_map: does not match the ", qt, " code table"));
  if (st.nested) {
    st.nested_blocksize = json_field<int64_t>(j, "nested_blocksize", w);
    if (st.nested_blocksize != 256)
      throw FormatError(
          str(w, ": nested_blocksize ", st.nested_blocksize, " (only 256 is produced by bitsandbytes)"));
    st.nested_dtype = float_dtype(json_field<std::string>(j, "nested_dtype", w), w, "nested_dtype");
    if (st.nested_dtype != DType::F32) throw FormatError(str(w, ": nested_dtype must be float32"));
    st.offset = float(json_field<double>(j, "nested_offset", w));
    Tensor na = need(d, "nested_absmax", where);
    expect(na, DType::F32, {(nb + 255) / 256}, str(where, ".nested_absmax"));
    st.nested_absmax = na;
    const Tensor& nqm = need(d, "nested_quant_map", where);
    expect(nqm, DType::F32, {256}, str(where, ".nested_quant_map"));
    Tensor nq = nqm.to(Device::cpu()).contiguous();
    if (std::memcmp(nq.data_ptr(), dynamic_map_signed().data(), 1024) != 0)
      throw FormatError(str(where, ".nested_quant_map: does not match the signed dynamic map"));
  } else if (d.count("nested_quant_map")) {
    throw FormatError(str(where, ": nested_quant_map without nested_absmax"));
  }
  return st;
}

}  // namespace nibble
