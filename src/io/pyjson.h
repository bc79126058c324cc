// JSON text exactly as Python's json.dumps writes it, for files that Python tools compare or
// hash byte for byte: separators ", " and ": " (or "," and ": " with an indent), floats as
// Python's repr (shortest round-trip digits; exponent form below 1e-4 and from 1e16),
// ensure_ascii escaping, optional sort_keys and indent.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace nibble::io {

// Python's repr(float): "6.0", "0.1", "1e-05", "1.5e+16", "NaN", "Infinity".
std::string python_float_repr(double v);

// Appends json.dumps(s) for one string (quotes included), with or without ensure_ascii.
void put_python_json_string(std::string& out, const std::string& s, bool ensure_ascii);

struct PyDumpOptions {
  int indent = -1;  // -1: one line; otherwise newline + indent spaces per level
  bool sort_keys = false;
  bool ensure_ascii = true;
};

std::string python_json_dumps(const nlohmann::ordered_json& j, const PyDumpOptions& opts = {});
inline std::string python_json_dumps(const nlohmann::json& j, const PyDumpOptions& opts = {}) {
  return python_json_dumps(nlohmann::ordered_json(j), opts);
}

}  // namespace nibble::io
