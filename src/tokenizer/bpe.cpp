// BPE model as HF `tokenizers` runs it: a word starts as its chars (with continuing-subword
// prefix / end-of-word suffix, byte fallback <0xXX>, fused unk), then pairs merge lowest rank
// first through a priority queue over a linked list of symbols (O(n log n) per word); merged
// words are cached, since natural text repeats words a lot.
#include <algorithm>
#include <cstdio>
#include <mutex>
#include <queue>
#include <shared_mutex>

#include "nibble/error.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/vocab_model.h"

namespace nibble::tok {
namespace {

// Open-addressing (linear probing) map from a merge pair to (rank, merged id): the merge loop
// does one lookup per candidate pair, and std::unordered_map's modulo + node chasing made
// those lookups most of the encode time.
class MergeMap {
 public:
  struct Value {
    int32_t rank, new_id;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, Value{0, 0});
    shift_ = 64 - __builtin_ctzll(cap);
  }
  void insert_or_assign(uint64_t k, Value v) {
    if ((size_ + 1) * 2 > keys_.size()) grow();
    size_t i = slot(k);
    if (keys_[i] == kEmpty) ++size_;
    keys_[i] = k;
    vals_[i] = v;
  }
  const Value* find(uint64_t k) const {
    if (keys_.empty()) return nullptr;
    size_t i = slot(k);
    return keys_[i] == k ? &vals_[i] : nullptr;
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  size_t slot(uint64_t k) const {
    size_t mask = keys_.size() - 1;
    size_t i = size_t((k * 0x9E3779B97F4A7C15ull) >> shift_);
    while (keys_[i] != kEmpty && keys_[i] != k) i = (i + 1) & mask;
    return i;
  }
  void grow() {
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<Value> old_vals = std::move(vals_);
    reserve(std::max<size_t>(16, old_keys.size()));
    size_ = 0;
    for (size_t i = 0; i < old_keys.size(); ++i)
      if (old_keys[i] != kEmpty) insert_or_assign(old_keys[i], old_vals[i]);
  }
  std::vector<uint64_t> keys_;
  std::vector<Value> vals_;
  size_t size_ = 0;
  int shift_ = 60;
};

class Bpe : public VocabModel {
 public:
  Bpe(const Json& j, const Where& w) {
    const Json& v = field(j, "vocab", w);
    if (!v.is_object()) format_error(w.at("vocab"), "is not an object");
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!it.value().is_number_integer())
        format_error(w.at("vocab"), "entry '" + it.key() + "' is not an integer id");
      vocab_.add(it.key(), vocab_id(it.value(), it.key(), v.size(), w));
    }
    unk_ = get_string_or(j, "unk_token", "", w);
    has_unk_ = j.contains("unk_token") && j["unk_token"].is_string();
    if (j.contains("continuing_subword_prefix") && j["continuing_subword_prefix"].is_string()) {
      prefix_ = j["continuing_subword_prefix"].get<std::string>();
      has_prefix_ = true;
    }
    if (j.contains("end_of_word_suffix") && j["end_of_word_suffix"].is_string()) {
      suffix_ = j["end_of_word_suffix"].get<std::string>();
      has_suffix_ = true;
    }
    fuse_unk_ = get_bool_or(j, "fuse_unk", false, w);
    byte_fallback_ = get_bool_or(j, "byte_fallback", false, w);
    ignore_merges_ = get_bool_or(j, "ignore_merges", false, w);

    const Json& m = field(j, "merges", w);
    if (!m.is_array()) format_error(w.at("merges"), "is not an array");
    merges_.reserve(m.size());
    int32_t rank = 0;
    for (size_t i = 0; i < m.size(); ++i) {
      std::string a, b;
      if (m[i].is_string()) {
        const std::string& line = m[i].get_ref<const std::string&>();
        if (line.rfind("#version", 0) == 0) continue;
        size_t sp = line.find(' ');
        if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
          format_error(w.at("merges").at(i), "is not 'a b'");
        a = line.substr(0, sp);
        b = line.substr(sp + 1);
      } else if (m[i].is_array() && m[i].size() == 2 && m[i][0].is_string() && m[i][1].is_string()) {
        a = m[i][0].get<std::string>();
        b = m[i][1].get<std::string>();
      } else {
        format_error(w.at("merges").at(i), "is neither \"a b\" nor [a, b]");
      }
      const int64_t* ia = vocab_.find(a);
      const int64_t* ib = vocab_.find(b);
      std::string joined = a + b.substr(std::min(b.size(), has_prefix_ ? prefix_.size() : size_t(0)));
      const int64_t* in = vocab_.find(joined);
      if (!ia || !ib || !in)
        format_error(w.at("merges").at(i), "'" + a + " " + b + "' names a token missing from the vocab");
      merges_.insert_or_assign(key(*ia, *ib), MergeMap::Value{rank, int32_t(*in)});
      ++rank;
    }
  }

  void tokenize(std::string_view word, std::vector<int64_t>& ids,
                std::vector<std::string>& tokens) const override {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (const int64_t* id = vocab_.find(word)) {
        ids.push_back(*id);
        tokens.push_back(std::string(word));
        return;
      }
    }
    std::vector<int32_t> out;
    bool cached = false;
    {
      std::shared_lock lock(cache_mu_);
      auto it = cache_.find(word);
      if (it != cache_.end()) {
        out = it->second;
        cached = true;
      }
    }
    if (!cached) {
      out = merge_word(word);
      std::unique_lock lock(cache_mu_);
      if (cache_.size() < kCacheCapacity && word.size() < 256) cache_.emplace(std::string(word), out);
    }
    for (int32_t id : out) {
      ids.push_back(id);
      tokens.push_back(*vocab_.token(id));
    }
  }

 private:
  static constexpr size_t kCacheCapacity = 1 << 16;
  static uint64_t key(int64_t a, int64_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  struct Symbol {
    int32_t id;
    int32_t prev, next;
    int32_t len;  // bytes of the original word; 0 once merged into its left neighbour
  };

  std::vector<int32_t> merge_word(std::string_view w) const {
    std::vector<Symbol> sym;
    sym.reserve(w.size());
    auto add = [&](int64_t id, size_t len) {
      int32_t n = int32_t(sym.size());
      sym.push_back({int32_t(id), n - 1, n + 1, int32_t(len)});
    };
    bool unk_pending = false;
    int64_t unk_id = 0;
    size_t unk_len = 0;
    std::string s;
    size_t i = 0;
    while (i < w.size()) {
      size_t b = i;
      next_cp(w, i);
      bool first = b == 0, last = i == w.size();
      s.clear();
      if (!first && has_prefix_) s += prefix_;
      s.append(w.substr(b, i - b));
      if (last && has_suffix_) s += suffix_;
      size_t byte_len = i - b;
      if (const int64_t* id = vocab_.find(s)) {
        if (unk_pending) {
          add(unk_id, unk_len);
          unk_pending = false;
        }
        add(*id, byte_len);
        continue;
      }
      if (byte_fallback_) {
        std::vector<int64_t> bytes;
        bool all = true;
        for (char c : s) {
          char code[8];
          std::snprintf(code, sizeof(code), "<0x%02X>", unsigned(static_cast<unsigned char>(c)));
          const int64_t* id = vocab_.find(code);
          if (!id) {
            all = false;
            break;
          }
          bytes.push_back(*id);
        }
        if (all) {
          for (int64_t id : bytes) add(id, 1);  // HF adds these before a pending unk
          continue;
        }
      }
      if (has_unk_) {
        const int64_t* uid = vocab_.find(unk_);
        if (!uid) throw FormatError("tokenizer.json: model.unk_token '" + unk_ + "' is not in the vocab");
        if (unk_pending && fuse_unk_) {
          unk_len += byte_len;
        } else {
          if (unk_pending) add(unk_id, unk_len);
          unk_pending = true;
          unk_id = *uid;
          unk_len = byte_len;
        }
      }
    }
    if (unk_pending) add(unk_id, unk_len);
    if (!sym.empty()) sym.back().next = -1;

    struct Cand {
      int32_t rank, pos, new_id;
      bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand> q;
    auto lookup = [&](int32_t a, int32_t b) { return merges_.find(key(a, b)); };
    for (size_t k = 0; k + 1 < sym.size(); ++k)
      if (auto m = lookup(sym[k].id, sym[k + 1].id)) q.push({m->rank, int32_t(k), m->new_id});
    while (!q.empty()) {
      Cand top = q.top();
      q.pop();
      Symbol& cur = sym[size_t(top.pos)];
      if (cur.len == 0 || cur.next < 0) continue;
      int32_t next_pos = cur.next;
      Symbol right = sym[size_t(next_pos)];
      auto m = lookup(cur.id, right.id);
      if (!m || m->new_id != top.new_id) continue;  // stale entry
      cur.id = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      sym[size_t(next_pos)].len = 0;
      if (right.next >= 0) sym[size_t(right.next)].prev = top.pos;
      if (cur.prev >= 0)
        if (auto pm = lookup(sym[size_t(cur.prev)].id, cur.id)) q.push({pm->rank, cur.prev, pm->new_id});
      if (cur.next >= 0)
        if (auto nm = lookup(cur.id, sym[size_t(cur.next)].id)) q.push({nm->rank, top.pos, nm->new_id});
    }
    std::vector<int32_t> out;
    for (const Symbol& x : sym)
      if (x.len != 0) out.push_back(x.id);
    return out;
  }

  MergeMap merges_;  // (a, b) -> (rank, merged id)
  std::string unk_, prefix_, suffix_;
  bool has_unk_ = false, has_prefix_ = false, has_suffix_ = false;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  mutable std::shared_mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace

std::unique_ptr<Model> make_bpe(const Json& j, const Where& w) {
  return std::make_unique<Bpe>(j, w);
}

}  // namespace nibble::tok
