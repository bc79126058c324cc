// Shared by every fuzz harness: a harness defines LLVMFuzzerTestOneInput; a rejected input is a
// nibble::Error (a clear, typed error); anything else escaping (another exception, a crash, a
// sanitizer report) is a finding.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nibble/error.h"

namespace nibble::fuzz {

// JSON from fuzz bytes; nullopt when it is not JSON (the parser itself is nlohmann's, tested upstream).
inline std::optional<nlohmann::json> parse_json(const uint8_t* data, size_t size) {
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}
inline std::optional<nlohmann::json> parse_json(std::string_view s) {
  return parse_json(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
inline std::optional<nlohmann::ordered_json> parse_ordered_json(std::string_view s) {
  auto j = nlohmann::ordered_json::parse(s.begin(), s.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// Harnesses whose input has several parts (a file and the text run through it, a template and
// its messages) separate them with this line; a seed stays a readable text file.
inline constexpr std::string_view kPartSeparator = "\n----8<----\n";

// The parts of an input: at most max_parts, the last one taking the rest.
inline std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    size_t at = rest.find(kPartSeparator);
    if (at == std::string_view::npos) break;
    parts.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kPartSeparator.size());
  }
  parts.push_back(rest);
  return parts;
}

// A private folder for harnesses that must go through files (Checkpoint::open reads a folder),
// under $TMPDIR, made once per process and removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/nibble-fuzz-XXXXXX";
    if (!mkdtemp(templ.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    std::filesystem::path p = templ;
    static struct Cleanup {
      std::filesystem::path p;
      ~Cleanup() {
        std::error_code ec;
        std::filesystem::remove_all(p, ec);
      }
    } cleanup{p};
    return p;
  }();
  return dir;
}

inline void write_bytes(const std::filesystem::path& p, const void* data, size_t size) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), std::streamsize(size));
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
    std::abort();
  }
}

}  // namespace nibble::fuzz

#define NIBBLE_FUZZ_ENTRY extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
