// A token <-> id table with string_view lookups, shared by the BPE/WordPiece/Unigram models.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace nibble::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class Vocab {
 public:
  void add(const std::string& token, int64_t id) {
    to_id_.insert_or_assign(token, id);
    if (id >= int64_t(to_token_.size())) {
      to_token_.resize(size_t(id) + 1);
      present_.resize(size_t(id) + 1, false);
    }
    to_token_[size_t(id)] = token;
    present_[size_t(id)] = true;
  }
  const int64_t* find(std::string_view s) const {
    auto it = to_id_.find(s);
    return it == to_id_.end() ? nullptr : &it->second;
  }
  const std::string* token(int64_t id) const {
    if (id < 0 || id >= int64_t(to_token_.size()) || !present_[size_t(id)]) return nullptr;
    return &to_token_[size_t(id)];
  }
  int64_t size() const { return int64_t(to_id_.size()); }

 private:
  std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>> to_id_;
  std::vector<std::string> to_token_;
  std::vector<bool> present_;
};

}  // namespace nibble::tok
