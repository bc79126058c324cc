// A byte trie over a vocabulary's pieces for Unigram's Viterbi: from one start position, every
// piece that is a prefix of the rest of the text, by increasing length, in a single walk that
// ends where no piece continues (as HF's common_prefix_search) — not one hash lookup of a
// fresh substring per candidate length, which made a long normalized text cost
// O(length x longest piece x hashed bytes).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace nibble::tok {

class PieceTrie {
 public:
  PieceTrie() { root_.fill(-1); }

  // Adds piece -> id (a later id for the same piece replaces the earlier, as Vocab::add does).
  // The empty piece is never a candidate and is not stored.
  void insert(std::string_view piece, int64_t id) {
    if (piece.empty()) return;
    int32_t* slot = &root_[static_cast<unsigned char>(piece[0])];
    int32_t node = *slot;
    if (node < 0) node = *slot = add_node(static_cast<unsigned char>(piece[0]));
    for (size_t i = 1; i < piece.size(); ++i) node = child_or_add(node, static_cast<unsigned char>(piece[i]));
    nodes_[size_t(node)].id = id;
  }

  // f(len, id) for each stored piece equal to s.substr(0, len), len increasing.
  template <class F>
  void prefixes(std::string_view s, F&& f) const {
    if (s.empty()) return;
    int32_t node = root_[static_cast<unsigned char>(s[0])];
    for (size_t len = 1; node >= 0; ++len) {
      const Node& n = nodes_[size_t(node)];
      if (n.id >= 0) f(len, n.id);
      if (len == s.size()) return;
      node = child(node, static_cast<unsigned char>(s[len]));
    }
  }

 private:
  struct Node {
    int64_t id = -1;
    int32_t first_child = -1, next_sibling = -1;
    uint8_t byte = 0;
  };

  int32_t add_node(uint8_t byte) {
    nodes_.push_back(Node{-1, -1, -1, byte});
    return int32_t(nodes_.size() - 1);
  }
  int32_t child(int32_t node, uint8_t byte) const {
    for (int32_t c = nodes_[size_t(node)].first_child; c >= 0; c = nodes_[size_t(c)].next_sibling)
      if (nodes_[size_t(c)].byte == byte) return c;
    return -1;
  }
  int32_t child_or_add(int32_t node, uint8_t byte) {
    const int32_t c = child(node, byte);
    if (c >= 0) return c;
    const int32_t n = add_node(byte);
    nodes_[size_t(n)].next_sibling = nodes_[size_t(node)].first_child;
    nodes_[size_t(node)].first_child = n;
    return n;
  }

  std::array<int32_t, 256> root_;  // the node of each one-byte prefix, -1 if none
  std::vector<Node> nodes_;
};

}  // namespace nibble::tok
