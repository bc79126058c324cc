// Fuzzed text through fixed real tokenizers (each tokenizer_json seed: byte-level BPE,
// sentencepiece BPE with byte fallback, WordPiece, Unigram, their normalizers, pre-tokenizers
// and decoders). Input: one byte choosing the tokenizer, then the text.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "fuzz_common.h"
#include "tokenizer_run.h"

namespace {

std::vector<nibble::Tokenizer> load_all() {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(NIBBLE_FUZZ_SEEDS "/tokenizer_json"))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<nibble::Tokenizer> out;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto parts = nibble::fuzz::split_parts(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 3);
    auto tj = nibble::fuzz::parse_json(parts[0]);
    nlohmann::json config = nullptr;
    if (parts.size() > 1)
      if (auto c = nibble::fuzz::parse_json(parts[1])) config = std::move(*c);
    out.push_back(nibble::Tokenizer::from_json(*tj, config, nullptr));  // a bad seed: a finding
  }
  if (out.empty()) std::abort();
  return out;
}

}  // namespace

NIBBLE_FUZZ_ENTRY {
  static const std::vector<nibble::Tokenizer> toks = load_all();
  if (size == 0) return 0;
  const nibble::Tokenizer& tok = toks[data[0] % toks.size()];
  nibble::fuzz::run_tokenizer(tok, std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
  return 0;
}
