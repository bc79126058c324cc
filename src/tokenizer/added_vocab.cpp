// Added tokens: see added_vocab.h. Matching walks a byte trie from each position and keeps
// the longest hit, jumping past it (leftmost-longest, as HF's Aho-Corasick in that mode).
#include "tokenizer/added_vocab.h"

#include <algorithm>

namespace nibble::tok {

void TokenTrie::insert(const std::string& pattern, int64_t id) {
  if (pattern.empty()) return;
  int32_t n = 0;
  for (char ch : pattern) {
    auto c = static_cast<unsigned char>(ch);
    auto& next = nodes_[size_t(n)].next;
    auto it = std::find_if(next.begin(), next.end(), [&](auto& p) { return p.first == c; });
    if (it != next.end()) {
      n = it->second;
    } else {
      int32_t fresh = int32_t(nodes_.size());
      nodes_[size_t(n)].next.emplace_back(c, fresh);
      nodes_.push_back(Node{});
      n = fresh;
    }
  }
  nodes_[size_t(n)].id = id;
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
}

std::pair<size_t, int64_t> TokenTrie::longest_at(std::string_view s, size_t pos) const {
  std::pair<size_t, int64_t> best{0, -1};
  if (pos >= s.size() || !first_byte_[static_cast<unsigned char>(s[pos])]) return best;
  int32_t n = 0;
  for (size_t i = pos; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    const auto& next = nodes_[size_t(n)].next;
    auto it = std::find_if(next.begin(), next.end(), [&](auto& p) { return p.first == c; });
    if (it == next.end()) break;
    n = it->second;
    if (nodes_[size_t(n)].id >= 0) best = {i + 1 - pos, nodes_[size_t(n)].id};
  }
  return best;
}

void AddedVocab::load(const Json& list, const Where& w, const Model& model, const Normalizer* normalizer) {
  if (!list.is_array()) format_error(w, "is not an array");
  int64_t next_id = model.vocab_size();
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& t = list[i];
    Where wi = w.at(i);
    AddedToken a;
    a.content = get_string(t, "content", wi);
    a.single_word = get_bool_or(t, "single_word", false, wi);
    a.lstrip = get_bool_or(t, "lstrip", false, wi);
    a.rstrip = get_bool_or(t, "rstrip", false, wi);
    a.special = get_bool_or(t, "special", false, wi);
    a.normalized = get_bool_or(t, "normalized", !a.special, wi);
    if (a.content.empty()) continue;
    // HF numbers a token by the model's vocab when it is there, otherwise the next free id.
    if (auto it = by_content_.find(a.content); it != by_content_.end())
      a.id = it->second;
    else if (auto mid = model.token_to_id(a.content))
      a.id = *mid;
    else
      a.id = next_id++;
    a.decode_form = a.content;
    if (a.normalized && normalizer) a.decode_form = normalizer->normalize(a.content);
    by_content_[a.content] = a.id;
    if (a.special) special_.insert(a.content);
    by_id_[a.id] = a;
  }
  for (const auto& [id, a] : by_id_) {
    if (a.normalized)
      norm_trie_.insert(a.decode_form, id);
    else
      raw_trie_.insert(a.content, id);
  }
}

const AddedToken* AddedVocab::by_id(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &it->second;
}

const int64_t* AddedVocab::id_of(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &it->second;
}

namespace {
bool is_word_char(char32_t c) {  // Rust regex \w: alphanumeric, marks, connector punctuation
  return is_alphanumeric(c) || is_mark(c) || c == '_';
}
bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t k = s.size() - 1;
  while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xc0) == 0x80) --k;
  return is_word_char(next_cp(s, k));
}
bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return is_word_char(next_cp(s, i));
}
}  // namespace

void AddedVocab::split(std::vector<Piece>& pieces, const TokenTrie& trie) const {
  if (trie.empty()) return;
  std::vector<Piece> out;
  for (auto& p : pieces) {
    if (p.added_id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    const std::string& s = p.text;
    size_t start_offset = 0;
    std::vector<Piece> local;
    auto emit = [&](size_t b, size_t e, int64_t id) {
      if (e > b) local.push_back(Piece{s.substr(b, e - b), p.at_start && b == 0, id});
    };
    size_t pos = 0;
    while (pos < s.size()) {
      auto [len, id] = trie.longest_at(s, pos);
      if (len == 0) {
        ++pos;
        continue;
      }
      size_t start = pos, stop = pos + len;
      pos = stop;
      const AddedToken& a = by_id_.at(id);
      if (a.single_word) {
        bool start_space = start == 0 || !ends_with_word(std::string_view(s).substr(0, start));
        bool stop_space = stop == s.size() || !starts_with_word(std::string_view(s).substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (a.lstrip) {
        size_t ns = start;
        while (ns > 0) {  // back over trailing whitespace of s[..start]
          size_t k = ns - 1;
          while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xc0) == 0x80) --k;
          size_t j = k;
          if (!is_whitespace(next_cp(s, j))) break;
          ns = k;
        }
        start = std::max(ns, start_offset);
      }
      if (a.rstrip) {
        while (stop < s.size()) {
          size_t j = stop;
          if (!is_whitespace(next_cp(s, j))) break;
          stop = j;
        }
        // The matcher resumes after the token itself, as HF's iterator does.
      }
      emit(start_offset, start, -1);
      emit(start, stop, id);
      start_offset = stop;
    }
    emit(start_offset, s.size(), -1);
    for (auto& q : local) out.push_back(std::move(q));
  }
  pieces = std::move(out);
}

void AddedVocab::extract_and_normalize(std::vector<Piece>& pieces, const Normalizer* normalizer) const {
  split(pieces, raw_trie_);
  if (normalizer) {
    for (auto& p : pieces)
      if (p.added_id < 0) p.text = normalizer->normalize(std::move(p.text));
    std::erase_if(pieces, [](const Piece& p) { return p.added_id < 0 && p.text.empty(); });
  }
  split(pieces, norm_trie_);
}

}  // namespace nibble::tok
