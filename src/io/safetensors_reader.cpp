// safetensors reader: mmap the file read-only, validate the whole header before handing out
// anything, then serve zero-copy views. The validation follows the Python/Rust safetensors
// library: tensors sorted by offset must tile the data section exactly, from 0 to its end,
// with each range holding numel * itemsize bytes. On top of that we reject what serde would
// silently accept or reject only vaguely (duplicate names, leading whitespace), and every
// error is one line naming the file, the tensor and the field.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string_view>
#include <tuple>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "io/read_file.h"
#include "io/utf8.h"
#include "nibble/error.h"
#include "nibble/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace nibble {

using detail::str;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the Python library's MAX_HEADER_SIZE

[[noreturn]] void fail(const std::string& origin, const std::string& msg) {
  throw FormatError(origin + ": " + msg);
}

// A name as it appears in a one-line message: quoted, control characters escaped.
std::string quote_name(const std::string& s) {
  constexpr size_t kMax = 200;  // a 1 MB key must not make a 1 MB message
  size_t n = s.size();
  if (n > kMax) {
    n = kMax;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) --n;  // keep UTF-8 whole
  }
  std::string out = "'";
  for (unsigned char c : std::string_view(s).substr(0, n)) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out + (n < s.size() ? "'..." : "'");
}

// nlohmann's messages may quote raw input bytes; keep the message one printable line.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) out += (c >= 0x20 && c < 0x7f) ? char(c) : '?';
  return out;
}

std::string tensor_ctx(const std::string& name) {
  return "tensor " + quote_name(name) + ": ";
}

// Records the first duplicate key of any JSON object while nlohmann parses; nlohmann itself
// keeps the last value silently, which would let two readers see different tensors.
struct DuplicateKeyFinder {
  struct Frame {
    std::string owner;  // the key whose value this object is ("" for the top level)
    std::unordered_set<std::string> keys;
  };
  std::vector<Frame> stack;
  std::string last_key;
  std::optional<std::string> duplicate;

  bool on_event(int /*depth*/, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        stack.push_back({stack.empty() ? std::string() : last_key, {}});
        break;
      case json::parse_event_t::object_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key: {
        last_key = parsed.get<std::string>();
        if (!stack.empty() && !stack.back().keys.insert(last_key).second && !duplicate) {
          if (stack.size() == 1 && last_key != "__metadata__")
            duplicate = "duplicate tensor name " + quote_name(last_key);
          else if (stack.size() == 1)
            duplicate = "duplicate key '__metadata__'";
          else
            duplicate =
                "duplicate key " + quote_name(last_key) + " in entry " + quote_name(stack.back().owner);
        }
        break;
      }
      default:
        break;
    }
    return true;
  }
};

// A JSON value as a non-negative integer, if it is one.
std::optional<uint64_t> as_index(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
  return std::nullopt;
}

const json& field(const std::string& origin, const std::string& name, const json& entry, const char* key) {
  auto it = entry.find(key);
  if (it == entry.end()) fail(origin, tensor_ctx(name) + "missing field '" + key + "'");
  return *it;
}

TensorInfo parse_entry(const std::string& origin, const std::string& name, const json& entry,
                       uint64_t data_len) {
  if (!entry.is_object())
    fail(origin, tensor_ctx(name) + "entry is a JSON " + entry.type_name() + ", not a JSON object");
  TensorInfo info;
  info.name = name;

  const json& dt = field(origin, name, entry, "dtype");
  if (!dt.is_string()) fail(origin, tensor_ctx(name) + "field 'dtype' is not a string");
  auto dtype = dtype_from_safetensors(dt.get_ref<const std::string&>());
  if (!dtype) fail(origin, tensor_ctx(name) + "unknown dtype " + quote_name(dt.get<std::string>()));
  info.dtype = *dtype;

  const json& shape = field(origin, name, entry, "shape");
  if (!shape.is_array()) fail(origin, tensor_ctx(name) + "field 'shape' is not an array");
  // Checked like the Python library (checked_mul over the dims, then by the item size): a
  // huge dim overflows even when a later dim is 0.
  auto overflow = [&] {
    fail(origin, tensor_ctx(name) + "shape " + printable(shape.dump()) + " of " +
                     traits(info.dtype).safetensors + " overflows a 64-bit byte count");
  };
  int64_t numel = 1;
  for (const json& d : shape) {
    if (!d.is_number_integer())  // true for unsigned too; floats, strings, ... fail here
      fail(origin, tensor_ctx(name) + "shape " + printable(shape.dump()) + " has a non-integer dimension");
    if (!d.is_number_unsigned() && d.get<int64_t>() < 0)
      fail(origin, tensor_ctx(name) + "shape " + printable(shape.dump()) + " has a negative dimension");
    uint64_t u = d.is_number_unsigned() ? d.get<uint64_t>() : uint64_t(d.get<int64_t>());
    if (u > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, int64_t(u), &numel)) overflow();
    info.shape.push_back(int64_t(u));
  }
  int64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, int64_t(dtype_bits(info.dtype) / 8), &nbytes)) overflow();

  const json& offs = field(origin, name, entry, "data_offsets");
  std::optional<uint64_t> begin, end;
  if (offs.is_array() && offs.size() == 2) begin = as_index(offs[0]), end = as_index(offs[1]);
  if (!begin || !end)
    fail(origin,
         tensor_ctx(name) + "data_offsets " + printable(offs.dump()) + " are not two non-negative integers");
  info.begin = *begin;
  info.end = *end;
  std::string range = str("data_offsets [", info.begin, ", ", info.end, "]");
  if (info.begin > info.end) fail(origin, tensor_ctx(name) + range + ": begin is after end");
  if (info.end > data_len)
    fail(origin,
         tensor_ctx(name) + range + " end beyond the data section of " + std::to_string(data_len) + " bytes");
  if (info.end - info.begin != uint64_t(nbytes))
    fail(origin, tensor_ctx(name) + str(range, " hold ", info.end - info.begin, " bytes but ",
                                        traits(info.dtype).safetensors, " ", shape_str(info.shape), " needs ",
                                        nbytes));
  return info;
}

std::map<std::string, std::string> parse_metadata(const std::string& origin, const json& m) {
  if (!m.is_object())
    fail(origin, std::string("__metadata__ is a JSON ") + m.type_name() + ", not an object");
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string())
      fail(origin, "__metadata__ entry " + quote_name(k) + " is a JSON " + v.type_name() + ", not a string");
    out[k] = v.get<std::string>();
  }
  return out;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& origin) {
  if (size < 8) fail(origin, str("file is ", size, " bytes, shorter than the 8-byte header length field"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];  // little-endian u64
  if (n == 0) fail(origin, "header length 0: the file has no JSON header");
  if (n > kMaxHeaderBytes)
    fail(origin, str("header length ", n, " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  if (n > size - 8)
    fail(origin, str("header length ", n, " runs past the end of the file (", size, " bytes)"));

  const char* text = reinterpret_cast<const char*>(data) + 8;
  if (!io::valid_utf8(text, n)) fail(origin, "header is not valid UTF-8");
  // JSON text never holds a raw NUL (not even inside strings), but nlohmann stops at one as
  // if the input ended there, so "{}\0garbage" would pass; serde_json rejects it.
  if (const void* nul = std::memchr(text, 0, n))
    fail(origin,
         str("header is not valid JSON: NUL byte at header offset ", static_cast<const char*>(nul) - text));
  DuplicateKeyFinder dups;
  json root;
  try {
    io::check_json_depth(std::string_view(text, n));  // serde_json's own limit is 128
    root = json::parse(text, text + n, [&dups](int depth, json::parse_event_t ev, json& parsed) {
      return dups.on_event(depth, ev, parsed);
    });
  } catch (const json::exception& e) {
    std::string what = e.what();
    if (auto p = what.find("] "); p != std::string::npos) what.erase(0, p + 2);  // drop "[json.exception...]"
    fail(origin, "header is not valid JSON: " + printable(what));
  }
  if (!root.is_object())
    fail(origin, std::string("header is a JSON ") + root.type_name() + ", not a JSON object");
  if (text[0] != '{') fail(origin, "header does not start with '{'");  // as safetensors >= 0.4 demands
  if (dups.duplicate) fail(origin, *dups.duplicate);

  SafetensorsHeader h;
  h.data_start = size_t(8 + n);
  uint64_t data_len = size - 8 - n;
  h.tensors.reserve(root.size());
  for (const auto& [key, val] : root.items()) {
    if (key == "__metadata__")
      h.metadata = parse_metadata(origin, val);
    else
      h.tensors.push_back(parse_entry(origin, key, val, data_len));
  }

  // The tensors, in offset order, must tile [0, data_len) with neither gaps nor overlaps.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : h.tensors) {
    std::string range = str("data_offsets [", t.begin, ", ", t.end, "]");
    if (t.begin < covered)
      fail(origin,
           tensor_ctx(t.name) + range +
               str(" overlap tensor ", quote_name(prev->name), " [", prev->begin, ", ", prev->end, "]"));
    if (t.begin > covered)
      fail(origin, tensor_ctx(t.name) + range +
                       str(" leave a gap of ", t.begin - covered, " bytes after offset ", covered,
                           " (tensors must tile the data section from 0)"));
    covered = t.end;
    if (t.end > t.begin || !prev) prev = &t;
  }
  if (covered != data_len)
    fail(origin, str("tensors cover ", covered, " bytes but the data section holds ", data_len,
                     " (trailing bytes after the last tensor)"));
  return h;
}

SafetensorsFile SafetensorsFile::open(const fs::path& path) {
  const std::string origin = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(str("cannot open ", origin, ": ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw IoError(str("cannot stat ", origin, ": ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(str("cannot read ", origin, ": not a regular file"));
  }
  size_t size = size_t(st.st_size);
  if (size < 8) {  // never mmap a zero-length region; the header check reports the size
    ::close(fd);
    uint8_t none[8] = {};
    parse_safetensors_header(none, size, origin);
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);  // the mapping keeps its own reference to the file
  if (p == MAP_FAILED) throw IoError(str("cannot mmap ", origin, ": ", std::strerror(err)));

  SafetensorsFile f;
  f.path_ = path;
  // Views hold this Storage; the last one to go unmaps. Writing through a view faults
  // (PROT_READ): views of a file are read-only by design.
  f.map_ = std::make_shared<Storage>(p, size, Device::cpu(),
                                     std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); }));
  SafetensorsHeader h = parse_safetensors_header(static_cast<const uint8_t*>(p), size, origin);
  f.data_start_ = h.data_start;
  f.metadata_ = std::move(h.metadata);
  f.names_.reserve(h.tensors.size());
  for (TensorInfo& t : h.tensors) {
    f.names_.push_back(t.name);
    f.index_.emplace(t.name, std::move(t));
  }
  return f;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path_.string(), "no tensor named " + quote_name(name));
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  return Tensor::from_storage(map_, data_start_ + size_t(t.begin), t.shape, t.dtype);
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo& t = info(name);
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  auto base = reinterpret_cast<uintptr_t>(map_->data());
  uintptr_t begin = base + data_start_ + size_t(t.begin), end = base + data_start_ + size_t(t.end);
  uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

size_t SafetensorsFile::file_size() const {
  return map_ ? map_->nbytes() : 0;
}

}  // namespace nibble
