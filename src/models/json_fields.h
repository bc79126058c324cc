// JsonFields: typed, checked reads of one JSON object of a Hugging Face config file
// (config.json, generation_config.json). JSON null counts as absent, as Python's None does for
// transformers' fields; a value of the wrong JSON type is a ConfigError naming the file and
// the field ("a/config.json: rope_parameters.factor: expected a number, got string").
// Integers must be JSON integers (Python writes 2, never 2.0); numbers accept both.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/read_file.h"
#include "nibble/error.h"

namespace nibble::models {

class JsonFields {
 public:
  // `prefix` ("rope_parameters.") is put before field names in messages.
  JsonFields(const nlohmann::json& j, std::string origin, std::string prefix = "")
      : j_(j), origin_(std::move(origin)), prefix_(std::move(prefix)) {
    if (!j_.is_object()) {
      std::string what = prefix_.empty() ? "the file" : prefix_.substr(0, prefix_.size() - 1);
      throw ConfigError(origin_ + ": " + what + " is not a JSON object");
    }
  }

  const std::string& origin() const { return origin_; }
  const nlohmann::json& json() const { return j_; }

  // Present and not null.
  bool has(const std::string& key) const {
    auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }
  // The first of `keys` that has() a value, or "".
  std::string first_present(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (has(k)) return k;
    return "";
  }

  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    throw ConfigError(origin_ + ": " + prefix_ + key + ": " + msg);
  }

  std::optional<int64_t> opt_int(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    const auto& v = j_.at(key);
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > uint64_t(INT64_MAX)) fail(key, "integer out of range");
      return int64_t(v.get<uint64_t>());
    }
    if (!v.is_number_integer()) fail(key, "expected an integer, got " + type_of(v));
    return v.get<int64_t>();
  }
  std::optional<double> opt_num(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    const auto& v = j_.at(key);
    if (!v.is_number()) fail(key, "expected a number, got " + type_of(v));
    return v.get<double>();
  }
  std::optional<bool> opt_bool(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    const auto& v = j_.at(key);
    if (!v.is_boolean()) fail(key, "expected true or false, got " + type_of(v));
    return v.get<bool>();
  }
  std::optional<std::string> opt_str(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    const auto& v = j_.at(key);
    if (!v.is_string()) fail(key, "expected a string, got " + type_of(v));
    return v.get<std::string>();
  }
  // A list of numbers (an absent key gives an empty list).
  std::vector<double> num_list(const std::string& key) const {
    std::vector<double> out;
    if (!has(key)) return out;
    const auto& v = j_.at(key);
    if (!v.is_array()) fail(key, "expected a list of numbers, got " + type_of(v));
    for (const auto& x : v) {
      if (!x.is_number()) fail(key, "expected a list of numbers, found " + type_of(x));
      out.push_back(x.get<double>());
    }
    return out;
  }
  // An integer or a list of integers (eos_token_id); absent gives an empty list.
  std::vector<int64_t> int_or_int_list(const std::string& key) const {
    std::vector<int64_t> out;
    if (!has(key)) return out;
    const auto& v = j_.at(key);
    if (v.is_number_integer()) return {v.get<int64_t>()};
    if (!v.is_array()) fail(key, "expected an integer or a list of integers, got " + type_of(v));
    for (const auto& x : v) {
      if (!x.is_number_integer()) fail(key, "expected a list of integers, found " + type_of(x));
      out.push_back(x.get<int64_t>());
    }
    return out;
  }

  int64_t req_int(const std::string& key) const {
    auto v = opt_int(key);
    if (!v) fail(key, "missing (required)");
    return *v;
  }
  int64_t int_or(const std::string& key, int64_t def) const { return opt_int(key).value_or(def); }
  double num_or(const std::string& key, double def) const { return opt_num(key).value_or(def); }
  bool bool_or(const std::string& key, bool def) const { return opt_bool(key).value_or(def); }
  std::string str_or(const std::string& key, const std::string& def) const {
    return opt_str(key).value_or(def);
  }

  static std::string type_of(const nlohmann::json& v) {
    if (v.is_number_integer()) return "integer";
    if (v.is_number_float()) return "float";
    return v.type_name();  // "string", "boolean", "array", "object", "null"
  }

 private:
  const nlohmann::json& j_;
  std::string origin_;
  std::string prefix_;
};

// The JSON object in a file: IoError when it cannot be read, FormatError when it is not JSON.
inline nlohmann::json read_json_file(const std::filesystem::path& p) {
  const std::string text = io::read_text_file(p);
  try {
    return io::parse_json(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(p.string() + ": not valid JSON (" + e.what() + ")");
  }
}

}  // namespace nibble::models
