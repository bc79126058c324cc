// safetensors writer, byte-identical to the Python library (its Rust core): tensors laid out
// by descending dtype alignment, then by name; header = serde_json's compact JSON with
// "__metadata__" first and each entry as {"dtype","shape","data_offsets"}, padded with spaces
// to a multiple of 8 so every tensor's data is aligned for its element type.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>

#include "io/atomic_file.h"
#include "io/utf8.h"
#include "nibble/error.h"
#include "nibble/safetensors.h"

namespace fs = std::filesystem;

namespace nibble {

using detail::str;

namespace {

// Position of a dtype in the Rust library's `Dtype` enum, which is declared in increasing
// alignment order and sorted descending for the layout: BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16
// F16 BF16 I32 U32 F32 F64 I64 U64. (U16/U32/U64 have no nibble dtype.)
int layout_rank(DType t) {
  switch (t) {
    case DType::Bool: return 0;
    case DType::U8: return 1;
    case DType::I8: return 2;
    case DType::F8_E5M2: return 3;
    case DType::F8_E4M3: return 4;
    case DType::I16: return 5;
    case DType::F16: return 7;
    case DType::BF16: return 8;
    case DType::I32: return 9;
    case DType::F32: return 11;
    case DType::F64: return 12;
    case DType::I64: return 13;
    default: return -1;  // packed kinds: rejected before sorting
  }
}

// A JSON string as serde_json writes it: UTF-8 raw, `"` and `\` escaped, the five short
// escapes, other control characters as \u00XX with lowercase hex; 0x7f and '/' left alone.
void append_json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
  }
  out += '"';
}

struct Entry {
  const std::string* name;
  Tensor tensor;  // as given (may be strided or on a device); made host-contiguous when written
};

struct Prepared {
  std::string header;  // padded JSON, without the 8-byte length
  std::vector<Entry> entries;
  uint64_t data_bytes = 0;
};

Prepared prepare(const std::map<std::string, Tensor>& tensors, const SaveOptions& opts) {
  Prepared p;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw FormatError("cannot save a tensor named '__metadata__': the name is reserved");
    if (!io::valid_utf8(name.data(), name.size()))
      throw FormatError("cannot save a tensor whose name is not valid UTF-8 (safetensors headers are UTF-8 JSON)");
    if (!t.defined()) throw FormatError("cannot save tensor '" + name + "': the tensor is undefined");
    if (!traits(t.dtype()).safetensors)
      throw FormatError(str("cannot save tensor '", name, "': dtype ", dtype_name(t.dtype()),
                            " has no safetensors spelling (store packed 4-bit data as U8)"));
    p.entries.push_back({&name, t});
  }
  std::stable_sort(p.entries.begin(), p.entries.end(), [](const Entry& a, const Entry& b) {
    int ra = layout_rank(a.tensor.dtype()), rb = layout_rank(b.tensor.dtype());
    return ra != rb ? ra > rb : *a.name < *b.name;  // std::string compares bytes unsigned, as Rust
  });

  std::map<std::string, std::string> meta = opts.metadata;
  if (opts.format_pt) meta.try_emplace("format", "pt");  // a caller's own "format" wins
  std::string& h = p.header;
  h += '{';
  if (!meta.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    auto put = [&](const std::string& k, const std::string& v) {
      if (!first) h += ',';
      first = false;
      append_json_string(h, k);
      h += ':';
      append_json_string(h, v);
    };
    // "format" first, as every transformers-written file has it; the Rust library's own
    // order for several keys is a HashMap's (random), so any fixed order is as faithful.
    if (auto it = meta.find("format"); it != meta.end()) put(it->first, it->second);
    for (const auto& [k, v] : meta)
      if (k != "format") put(k, v);
    h += '}';
    if (!p.entries.empty()) h += ',';
  }
  for (size_t i = 0; i < p.entries.size(); ++i) {
    const Entry& e = p.entries[i];
    if (i) h += ',';
    append_json_string(h, *e.name);
    h += ":{\"dtype\":\"";
    h += traits(e.tensor.dtype()).safetensors;
    h += "\",\"shape\":[";
    for (size_t d = 0; d < e.tensor.shape().size(); ++d) {
      if (d) h += ',';
      h += std::to_string(e.tensor.shape()[d]);
    }
    uint64_t n = e.tensor.nbytes();
    h += str("],\"data_offsets\":[", p.data_bytes, ",", p.data_bytes + n, "]}");
    p.data_bytes += n;
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return p;
}

// The tensor's bytes as a contiguous host tensor (a no-op for host-contiguous input).
Tensor host_contiguous(const Tensor& t) {
  Tensor h = t.device().is_cpu() ? t : t.to(Device::cpu());
  return h.contiguous();
}

std::array<uint8_t, 8> le64(uint64_t v) {
  std::array<uint8_t, 8> b{};
  for (int i = 0; i < 8; ++i) b[size_t(i)] = uint8_t(v >> (8 * i));
  return b;
}

}  // namespace

std::vector<uint8_t> serialize_safetensors(const std::map<std::string, Tensor>& tensors, const SaveOptions& opts) {
  Prepared p = prepare(tensors, opts);
  std::vector<uint8_t> out;
  out.reserve(8 + p.header.size() + p.data_bytes);
  auto n = le64(p.header.size());
  out.insert(out.end(), n.begin(), n.end());
  out.insert(out.end(), p.header.begin(), p.header.end());
  for (const Entry& e : p.entries) {
    Tensor h = host_contiguous(e.tensor);
    auto b = h.bytes();
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

void save_safetensors(const fs::path& path, const std::map<std::string, Tensor>& tensors, const SaveOptions& opts) {
  Prepared p = prepare(tensors, opts);
  // Streamed tensor by tensor: a device or strided tensor is staged on the host one at a
  // time, so writing a large model never holds a second full copy in memory.
  io::AtomicFile f(path);
  auto n = le64(p.header.size());
  f.write(n.data(), n.size());
  f.write(p.header.data(), p.header.size());
  for (const Entry& e : p.entries) {
    Tensor h = host_contiguous(e.tensor);
    f.write(h.data_ptr(), h.nbytes());
  }
  f.commit();
}

}  // namespace nibble
