// BitsAndBytesConfig, reproducing transformers 5.17 (utils/quantization_config.py):
// validation as its __init__/post_init, to_dict() as its __dict__ with dtypes stringified,
// to_diff_dict() against a default config, and to_json_string() through a small JSON writer
// that formats exactly as Python's json.dumps(indent=2, sort_keys=True): floats as Python's
// repr (shortest round-trip digits, exponent outside [1e-4, 1e16)), non-ASCII as \uXXXX.
// nlohmann's own dump differs from Python for floats from 1e15 to 1e16 (1e15 is "1e+15" there,
// "1000000000000000.0" in Python) and writes NaN/inf as null, so it is not used for text.
#include "nibble/bnb_config.h"

#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string_view>

#include <nlohmann/json.hpp>

#include "io/pyjson.h"
#include "io/read_file.h"
#include "nibble/error.h"

namespace nibble {

using detail::str;
using nlohmann::json;

namespace {

constexpr const char* kWho = "BitsAndBytesConfig: ";

// Every dtype attribute of the torch module (torch 2.11) as str(dtype).split(".")[1], which is
// what transformers writes, and the aliases getattr(torch, name) also accepts.
// clang-format off
constexpr const char* kTorchDTypes[] = {
    "float32", "float64", "float16", "bfloat16", "complex32", "complex64", "complex128",
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "bool",
    "quint8", "qint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2",
    "bits8", "bits16", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz",
    "float8_e8m0fnu", "float4_e2m1fn_x2", "int1", "int2", "int3", "int4", "int5", "int6",
    "int7", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7",
};
struct TorchAlias {
  const char* alias;
  const char* canonical;
};
constexpr TorchAlias kTorchAliases[] = {
    {"float", "float32"}, {"double", "float64"}, {"half", "float16"},
    {"chalf", "complex32"}, {"cfloat", "complex64"}, {"cdouble", "complex128"},
    {"short", "int16"}, {"int", "int32"}, {"long", "int64"},
};
// clang-format on

// transformers' list for a bnb_4bit_quant_storage string, in its order (used in the message).
constexpr std::array<const char*, 6> kQuantStorages = {"float16", "float32", "int8",
                                                       "uint8",   "float64", "bfloat16"};

// A user's string for a message: in single quotes, control characters as \xNN so it stays one line.
std::string in_quotes(std::string_view s) {
  static const char* hex = "0123456789abcdef";
  std::string out = "'";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f)
      out += std::string("\\x") + hex[c >> 4] + hex[c & 0xf];
    else
      out += ch;
  }
  return out + "'";
}

std::optional<std::string> torch_canonical(std::string_view name) {
  if (name.starts_with("torch.")) name.remove_prefix(6);  // the C++ stand-in for a torch.dtype
  for (const char* t : kTorchDTypes)
    if (name == t) return std::string(t);
  for (const auto& a : kTorchAliases)
    if (name == a.alias) return std::string(a.canonical);
  return std::nullopt;
}

std::string canonical_compute_dtype(const std::optional<std::string>& given) {
  if (!given) return "float32";
  if (auto c = torch_canonical(*given)) return *c;
  throw ConfigError(str(kWho, "bnb_4bit_compute_dtype must name a torch dtype, e.g. float32, float16 or ",
                        "bfloat16 (got ", in_quotes(*given), ")"));
}

bool is_quant_storage(std::string_view s) {
  for (const char* q : kQuantStorages)
    if (s == q) return true;
  return false;
}

// transformers checks a string against its list literally (no aliases); a torch.dtype object
// it would take as is. nibble stores 4-bit codes only in these six, so a "torch." name must
// also resolve to one of them.
std::string canonical_quant_storage(const std::optional<std::string>& given) {
  if (!given) return "uint8";
  std::optional<std::string> c;
  if (given->starts_with("torch."))
    c = torch_canonical(*given);
  else if (is_quant_storage(*given))
    c = *given;
  if (!c || !is_quant_storage(*c))
    throw ConfigError(str(kWho, "bnb_4bit_quant_storage must be one of float16, float32, int8, uint8, ",
                          "float64, bfloat16 (got ", in_quotes(*given), ")"));
  return *c;
}

// ---- reading a dict ---------------------------------------------------------------------

// A JSON value for an error message, cut short when long.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', true, json::error_handler_t::replace);
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// Python's truth value of a JSON value (what dict.get(key, False) tests).
bool py_truthy(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return false;
    case json::value_t::boolean:
      return v.get<bool>();
    case json::value_t::number_integer:
      return v.get<int64_t>() != 0;
    case json::value_t::number_unsigned:
      return v.get<uint64_t>() != 0;
    case json::value_t::number_float:
      return v.get<double>() != 0.0;
    default:
      return !v.empty();  // string, array, object
  }
}

// post_init's isinstance(x, bool): a JSON 0/1 or null is not a bool.
bool read_bool(const json& d, const char* key, bool fallback) {
  auto it = d.find(key);
  if (it == d.end()) return fallback;
  if (!it->is_boolean()) throw ConfigError(str(kWho, key, " must be a boolean (got ", shown(*it), ")"));
  return it->get<bool>();
}

// load_in_4bit / load_in_8bit, falling back to the private spelling when the public is absent.
bool read_load_flag(const json& d, const std::string& key) {
  if (d.contains(key)) return read_bool(d, key.c_str(), false);
  std::string priv = "_" + key;
  return read_bool(d, priv.c_str(), false);
}

// For a dtype argument: None -> nullopt; a str -> kept; anything else is transformers'
// ValueError("... must be a string or a torch.dtype").
std::optional<std::string> read_dtype_name(const json& d, const char* key) {
  auto it = d.find(key);
  if (it == d.end() || it->is_null()) return std::nullopt;
  if (!it->is_string())
    throw ConfigError(str(kWho, key, " must be a string or a torch.dtype (got ", shown(*it), ")"));
  return it->get<std::string>();
}

}  // namespace

// ---- BitsAndBytesConfig -------------------------------------------------------------------

void BitsAndBytesConfig::validate() const {
  if (load_in_4bit && load_in_8bit)
    throw ConfigError(str(kWho, "load_in_4bit and load_in_8bit are both true, but only one can be used ",
                          "at the same time"));
  canonical_compute_dtype(bnb_4bit_compute_dtype);
  canonical_quant_storage(bnb_4bit_quant_storage);
  // transformers only checks that this is a str (bitsandbytes fails later on anything else);
  // nibble has kernels for these two only, so it says so up front.
  if (bnb_4bit_quant_type != "fp4" && bnb_4bit_quant_type != "nf4")
    throw ConfigError(
        str(kWho, "bnb_4bit_quant_type must be 'fp4' or 'nf4' (got ", in_quotes(bnb_4bit_quant_type), ")"));
}

DType BitsAndBytesConfig::compute_dtype() const {
  std::string c = canonical_compute_dtype(bnb_4bit_compute_dtype);
  std::optional<DType> t = dtype_from_torch(c);
  if (!t || !is_float(*t))
    throw UnsupportedError(
        str(kWho, "bnb_4bit_compute_dtype ", c,
            " is a torch dtype nibble cannot compute in (use float32, float16 or bfloat16)"));
  return *t;
}

DType BitsAndBytesConfig::quant_storage() const {
  std::optional<DType> t = dtype_from_torch(canonical_quant_storage(bnb_4bit_quant_storage));
  NIBBLE_CHECK(t.has_value(), "every allowed quant storage name has a DType");
  return *t;
}

std::optional<std::string> BitsAndBytesConfig::quantization_method() const {
  if (load_in_8bit) return "llm_int8";
  if (load_in_4bit && bnb_4bit_quant_type == "fp4") return "fp4";
  if (load_in_4bit && bnb_4bit_quant_type == "nf4") return "nf4";
  return std::nullopt;
}

json BitsAndBytesConfig::to_dict() const {
  validate();
  json d = json::object();
  d["quant_method"] = "bitsandbytes";
  // transformers keeps the flags in private attributes behind properties; __dict__ has the
  // private names, and to_dict() adds the public ones: both spellings end up in config.json.
  d["_load_in_8bit"] = load_in_8bit;
  d["_load_in_4bit"] = load_in_4bit;
  d["llm_int8_threshold"] = llm_int8_threshold;  // a JSON float: Python writes 6.0, not 6
  d["llm_int8_skip_modules"] = llm_int8_skip_modules ? json(*llm_int8_skip_modules) : json(nullptr);
  d["llm_int8_enable_fp32_cpu_offload"] = llm_int8_enable_fp32_cpu_offload;
  d["llm_int8_has_fp16_weight"] = llm_int8_has_fp16_weight;
  d["bnb_4bit_quant_type"] = bnb_4bit_quant_type;
  d["bnb_4bit_use_double_quant"] = bnb_4bit_use_double_quant;
  d["bnb_4bit_compute_dtype"] = canonical_compute_dtype(bnb_4bit_compute_dtype);
  d["bnb_4bit_quant_storage"] = canonical_quant_storage(bnb_4bit_quant_storage);
  d["load_in_4bit"] = load_in_4bit;
  d["load_in_8bit"] = load_in_8bit;
  return d;
}

json BitsAndBytesConfig::to_diff_dict() const {
  json d = to_dict();
  json defaults = BitsAndBytesConfig{}.to_dict();
  json diff = json::object();
  // Python's `!=` calls NaN unequal to everything; nlohmann's != says false for a NaN
  // operand while its == also says false, so !(==) is Python's `!=`.
  for (const auto& [key, value] : d.items())
    if (!(value == defaults[key])) diff[key] = value;
  return diff;
}

std::string BitsAndBytesConfig::to_json_string(bool use_diff) const {
  try {
    return io::python_json_dumps(use_diff ? to_diff_dict() : to_dict(), {.indent = 2, .sort_keys = true}) +
           "\n";
  } catch (const FormatError& e) {  // a field holding bytes Python could not hold as a str
    throw ConfigError(str(kWho, e.what()));
  }
}

BitsAndBytesConfig BitsAndBytesConfig::from_dict(const json& d) {
  if (!d.is_object()) throw ConfigError(str(kWho, "expected a JSON object (got ", shown(d), ")"));
  BitsAndBytesConfig c;
  c.load_in_8bit = read_load_flag(d, "load_in_8bit");
  c.load_in_4bit = read_load_flag(d, "load_in_4bit");
  if (auto it = d.find("llm_int8_threshold"); it != d.end()) {
    // isinstance(x, float): a JSON integer (6) is a Python int and transformers rejects it.
    if (!it->is_number_float())
      throw ConfigError(str(kWho, "llm_int8_threshold must be a float (got ", shown(*it), ")"));
    c.llm_int8_threshold = it->get<double>();
  }
  if (auto it = d.find("llm_int8_skip_modules"); it != d.end() && !it->is_null()) {
    if (!it->is_array())
      throw ConfigError(str(kWho, "llm_int8_skip_modules must be a list of strings (got ", shown(*it), ")"));
    std::vector<std::string> names;
    // transformers checks only for a list; a non-string entry would break its name matching
    // later, so nibble refuses it here.
    for (const auto& n : *it) {
      if (!n.is_string())
        throw ConfigError(
            str(kWho, "llm_int8_skip_modules must be a list of strings (got ", shown(*it), ")"));
      names.push_back(n.get<std::string>());
    }
    c.llm_int8_skip_modules = std::move(names);
  }
  c.llm_int8_enable_fp32_cpu_offload = read_bool(d, "llm_int8_enable_fp32_cpu_offload", false);
  c.llm_int8_has_fp16_weight = read_bool(d, "llm_int8_has_fp16_weight", false);
  c.bnb_4bit_compute_dtype = read_dtype_name(d, "bnb_4bit_compute_dtype");
  if (auto it = d.find("bnb_4bit_quant_type"); it != d.end()) {
    if (!it->is_string())
      throw ConfigError(str(kWho, "bnb_4bit_quant_type must be a string (got ", shown(*it), ")"));
    c.bnb_4bit_quant_type = it->get<std::string>();
  }
  c.bnb_4bit_use_double_quant = read_bool(d, "bnb_4bit_use_double_quant", false);
  c.bnb_4bit_quant_storage = read_dtype_name(d, "bnb_4bit_quant_storage");
  c.validate();
  return c;
}

BitsAndBytesConfig BitsAndBytesConfig::from_config_json(const std::filesystem::path& config_json) {
  const std::string where = config_json.string();
  const std::string text = io::read_text_file(config_json);
  json root;
  try {
    root = io::parse_json(text);
  } catch (const json::exception& e) {
    throw FormatError(str(where, ": invalid JSON: ", e.what()));
  }
  if (!root.is_object()) throw FormatError(str(where, ": expected a JSON object at top level"));
  auto it = root.find("quantization_config");
  if (it == root.end() || it->is_null())
    throw ConfigError(str(where, ": no quantization_config (not a quantized checkpoint)"));
  const json& qc = *it;
  if (!qc.is_object()) throw ConfigError(str(where, ": quantization_config is not a JSON object"));
  // transformers' AutoQuantizationConfig.from_dict: a truthy load_in_8bit/load_in_4bit makes
  // it a bitsandbytes config whatever quant_method says (backward compatibility with configs
  // written before quant_method existed); otherwise quant_method decides.
  bool flagged = (qc.contains("load_in_8bit") && py_truthy(qc["load_in_8bit"])) ||
                 (qc.contains("load_in_4bit") && py_truthy(qc["load_in_4bit"]));
  if (!flagged) {
    auto m = qc.find("quant_method");
    if (m == qc.end() || m->is_null())
      throw ConfigError(str(where, ": quantization_config has no quant_method"));
    if (*m != "bitsandbytes")
      throw ConfigError(
          str(where, ": quantization_config is for quant_method ", shown(*m), ", not bitsandbytes"));
  }
  try {
    return from_dict(qc);
  } catch (const ConfigError& e) {
    throw ConfigError(str(where, ": quantization_config: ", e.what()));
  }
}

}  // namespace nibble
