// The WordPiece, WordLevel and Unigram models, and the model factory (which, like HF, also
// recognises a model JSON without "type" by its fields).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "nibble/error.h"
#include "tokenizer/piece_trie.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/vocab_model.h"

namespace nibble::tok {

int64_t vocab_id(const Json& id, const std::string& token, size_t entries, const Where& w) {
  // Ids index a table: negative ones, and ones far past the entry count (a table of billions of
  // empty slots), are refused. Real vocabularies are dense: ids below their size.
  const int64_t x =
      id.is_number_unsigned() && id.get<uint64_t>() > uint64_t(INT64_MAX) ? -1 : id.get<int64_t>();
  const int64_t most = int64_t(entries) + (int64_t(1) << 20);
  if (x < 0 || x >= most)
    format_error(w.at("vocab"),
                 detail::str("entry '", token, "' has id ", id.dump(), ", outside [0, ", most, ")"));
  return x;
}

std::unique_ptr<Model> make_bpe(const Json& j, const Where& w);

namespace {

void read_object_vocab(const Json& j, const Where& w, Vocab& vocab) {
  const Json& v = field(j, "vocab", w);
  if (!v.is_object()) format_error(w.at("vocab"), "is not an object");
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer())
      format_error(w.at("vocab"), "entry '" + it.key() + "' is not an integer id");
    vocab.add(it.key(), vocab_id(it.value(), it.key(), v.size(), w));
  }
}

// Greedy longest-match-first from the left; a word that cannot be covered becomes one unk.
class WordPiece : public VocabModel {
 public:
  WordPiece(const Json& j, const Where& w) {
    read_object_vocab(j, w, vocab_);
    unk_ = get_string_or(j, "unk_token", "[UNK]", w);
    prefix_ = get_string_or(j, "continuing_subword_prefix", "##", w);
    max_chars_ = size_t(get_int_or(j, "max_input_chars_per_word", 100, w));
  }

  void tokenize(std::string_view word, std::vector<int64_t>& ids,
                std::vector<std::string>& tokens) const override {
    size_t nchars = 0;
    for (char c : word) nchars += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
    size_t mark_ids = ids.size();
    bool bad = nchars > max_chars_;
    std::string sub;
    size_t start = 0;
    while (!bad && start < word.size()) {
      size_t end = word.size();
      bool found = false;
      while (start < end) {
        sub.clear();
        if (start > 0) sub += prefix_;
        sub.append(word.substr(start, end - start));
        if (const int64_t* id = vocab_.find(sub)) {
          ids.push_back(*id);
          tokens.push_back(sub);
          found = true;
          break;
        }
        size_t k = end - 1;
        while (k > start && (static_cast<unsigned char>(word[k]) & 0xc0) == 0x80) --k;
        end = k;
      }
      if (!found) bad = true;
      start = end;
    }
    if (bad) {
      ids.resize(mark_ids);
      tokens.resize(mark_ids);
      push_unk(unk_, ids, tokens);
    }
  }

 private:
  std::string unk_, prefix_;
  size_t max_chars_ = 100;
};

class WordLevel : public VocabModel {
 public:
  WordLevel(const Json& j, const Where& w) {
    read_object_vocab(j, w, vocab_);
    unk_ = get_string(j, "unk_token", w);
  }
  void tokenize(std::string_view word, std::vector<int64_t>& ids,
                std::vector<std::string>& tokens) const override {
    if (const int64_t* id = vocab_.find(word)) {
      ids.push_back(*id);
      tokens.push_back(std::string(word));
      return;
    }
    push_unk(unk_, ids, tokens);
  }

 private:
  std::string unk_;
};

// Viterbi over all vocab pieces that start at each char boundary; a char no piece covers
// becomes unk with score min_score - 10; consecutive unks fuse; unknown pieces may fall back
// to <0xXX> byte tokens. Ties go as in HF's encode_optimized: starts visited left to right,
// pieces by increasing length, a best path replaced only by a strictly better score (the first
// of equal candidates stays), with the scores as serde_json reads them (serde_json_f64).
class Unigram : public VocabModel {
 public:
  Unigram(const Json& j, const Where& w) {
    const Json& v = field(j, "vocab", w);
    if (!v.is_array()) format_error(w.at("vocab"), "is not an array");
    scores_.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      const Json& e = v[i];
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
        format_error(w.at("vocab").at(i), "is not [piece, score]");
      const std::string& piece = e[0].get_ref<const std::string&>();
      vocab_.add(piece, int64_t(i));
      scores_.push_back(serde_json_f64(e[1].get<double>()));  // the score HF holds, to the ulp
      min_score_ = std::min(min_score_, scores_.back());
      max_len_ = std::max(max_len_, piece.size());
    }
    for (size_t i = 0; i < v.size(); ++i) {  // ids as the vocab resolved repeated pieces
      const std::string& piece = v[i][0].get_ref<const std::string&>();
      trie_.insert(piece, *vocab_.find(piece));
    }
    if (j.contains("unk_id") && !j["unk_id"].is_null()) {
      unk_id_ = get_int_or(j, "unk_id", -1, w);
      if (unk_id_ < 0 || unk_id_ >= int64_t(v.size())) format_error(w.at("unk_id"), "is outside the vocab");
    }
    byte_fallback_ = get_bool_or(j, "byte_fallback", false, w);
  }

  void tokenize(std::string_view s, std::vector<int64_t>& ids,
                std::vector<std::string>& tokens) const override {
    if (s.empty()) return;
    for (const std::string& piece : encode(s)) {
      if (const int64_t* id = vocab_.find(piece)) {
        ids.push_back(*id);
        tokens.push_back(piece);
        continue;
      }
      if (byte_fallback_) {
        std::vector<std::pair<int64_t, std::string>> bytes;
        for (char c : piece) {
          char code[8];
          std::snprintf(code, sizeof(code), "<0x%02X>", unsigned(static_cast<unsigned char>(c)));
          const int64_t* id = vocab_.find(code);
          if (!id) break;
          bytes.emplace_back(*id, code);
        }
        if (bytes.size() == piece.size()) {
          for (auto& [id, t] : bytes) {
            ids.push_back(id);
            tokens.push_back(std::move(t));
          }
          continue;
        }
      }
      if (unk_id_ < 0)
        throw FormatError("tokenizer.json: model.unk_id is needed for '" + piece + "' but is not set");
      ids.push_back(unk_id_);
      tokens.push_back(piece);  // HF keeps the text of an unknown piece as its token string
    }
  }
  int64_t vocab_size() const override { return int64_t(scores_.size()); }

 private:
  std::vector<std::string> encode(std::string_view s) const {
    struct Node {
      int64_t id = 0;
      double score = 0;
      int64_t start = -1;
    };
    const double unk_score = min_score_ - 10.0;
    std::vector<Node> best(s.size() + 1);
    size_t pos = 0;
    while (pos < s.size()) {
      double here = best[pos].score;
      // A normalizer may leave a cut character at the end: never step past it.
      size_t mblen = std::min(utf8_len(static_cast<unsigned char>(s[pos])), s.size() - pos);
      bool single = false;
      trie_.prefixes(s.substr(pos, std::min(max_len_, s.size() - pos)), [&](size_t len, int64_t id) {
        Node& t = best[pos + len];
        double cand = scores_[size_t(id)] + here;
        if (t.start < 0 || cand > t.score) t = {id, cand, int64_t(pos)};
        if (len == mblen) single = true;
      });
      if (!single) {
        if (unk_id_ < 0) throw FormatError("tokenizer.json: model.unk_id is needed but is not set");
        Node& t = best[pos + mblen];
        double cand = unk_score + here;
        if (t.start < 0 || cand > t.score) t = {unk_id_, cand, int64_t(pos)};
      }
      pos += mblen;
    }
    // Walking back from the end, consecutive unknown pieces are fused into one (HF does): they
    // are adjacent in s, so a run is the span [run_start, run_end) — kept as two offsets, not
    // built by prepending (quadratic on a long unknown run).
    std::vector<std::string> out;
    size_t run_start = 0, run_end = 0;
    bool in_unk = false;
    size_t end = s.size();
    while (end > 0) {
      const Node& n = best[end];
      size_t start = size_t(n.start);
      if (unk_id_ >= 0 && n.id == unk_id_) {
        if (!in_unk) run_end = end;
        run_start = start;
        in_unk = true;
      } else {
        if (in_unk) {
          out.emplace_back(s.substr(run_start, run_end - run_start));
          in_unk = false;
        }
        out.emplace_back(s.substr(start, end - start));
      }
      end = start;
    }
    if (in_unk) out.emplace_back(s.substr(run_start, run_end - run_start));
    std::reverse(out.begin(), out.end());
    return out;
  }

  PieceTrie trie_;
  std::vector<double> scores_;
  double min_score_ = std::numeric_limits<double>::infinity();
  size_t max_len_ = 0;
  int64_t unk_id_ = -1;
  bool byte_fallback_ = false;
};

}  // namespace

std::unique_ptr<Model> make_model(const Json& j, const Where& w) {
  if (!j.is_object()) format_error(w, "is not a JSON object");
  std::string type;
  if (j.contains("type")) {
    type = type_of(j, w);
  } else if (j.contains("merges")) {  // HF's untagged fallback, tried in its order
    type = "BPE";
  } else if (j.contains("vocab") && j["vocab"].is_array()) {
    type = "Unigram";
  } else if (j.contains("continuing_subword_prefix") || j.contains("max_input_chars_per_word")) {
    type = "WordPiece";
  } else if (j.contains("vocab")) {
    type = "WordLevel";
  } else {
    format_error(w, "has no type and is no known model");
  }
  if (type == "BPE") return make_bpe(j, w);
  if (type == "WordPiece") return std::make_unique<WordPiece>(j, w);
  if (type == "WordLevel") return std::make_unique<WordLevel>(j, w);
  if (type == "Unigram") return std::make_unique<Unigram>(j, w);
  unsupported_type(w, type);
}

}  // namespace nibble::tok
