// HF's AddedVocabulary: tokens outside the model (special or not) cut out of the text before
// the model sees it, by leftmost-longest matching, with single_word / lstrip / rstrip rules;
// tokens marked `normalized` are matched on the normalized text in their normalized form.
#pragma once

#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tokenizer/tok_internal.h"

namespace nibble::tok {

struct AddedToken {
  std::string content;
  int64_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  std::string decode_form;  // the normalized content for normalized tokens (HF's normalized_cache)
};

// A byte trie answering "longest pattern starting here".
class TokenTrie {
 public:
  void insert(const std::string& pattern, int64_t id);
  bool empty() const { return nodes_.size() <= 1; }
  // Length and id of the longest pattern at s[pos..]; {0, -1} when none.
  std::pair<size_t, int64_t> longest_at(std::string_view s, size_t pos) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int64_t id = -1;
  };
  std::vector<Node> nodes_{Node{}};
  bool first_byte_[256] = {};
};

class AddedVocab {
 public:
  // Adds the `added_tokens` of tokenizer.json in order, as HF's add_tokens does.
  void load(const Json& list, const Where& w, const Model& model, const Normalizer* normalizer);
  // Splits each untokenized piece on the raw-text tokens, normalizes the rest, then splits on
  // the normalized-text tokens.
  void extract_and_normalize(std::vector<Piece>& pieces, const Normalizer* normalizer) const;

  const AddedToken* by_id(int64_t id) const;
  const int64_t* id_of(std::string_view content) const;
  bool is_special_content(const std::string& s) const { return special_.count(s) != 0; }
  size_t size() const { return by_id_.size(); }
  const std::unordered_map<int64_t, AddedToken>& all() const { return by_id_; }

 private:
  void split(std::vector<Piece>& pieces, const TokenTrie& trie) const;

  std::unordered_map<int64_t, AddedToken> by_id_;
  std::unordered_map<std::string, int64_t> by_content_;
  std::unordered_set<std::string> special_;
  TokenTrie raw_trie_, norm_trie_;
};

}  // namespace nibble::tok
