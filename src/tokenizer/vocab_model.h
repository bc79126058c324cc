// VocabModel: what every tokenizer.json model with a token <-> id table shares — lookups in
// both directions and the unk fallback — so BPE, WordPiece, WordLevel and Unigram only add
// their own tokenize().
#pragma once

#include <string>

#include "nibble/error.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/vocab.h"

namespace nibble::tok {

class VocabModel : public Model {
 public:
  std::optional<int64_t> token_to_id(std::string_view t) const override {
    if (const int64_t* id = vocab_.find(t)) return *id;
    return std::nullopt;
  }
  const std::string* id_to_token(int64_t id) const override { return vocab_.token(id); }
  int64_t vocab_size() const override { return vocab_.size(); }

 protected:
  // Appends the unk token; a model whose unk_token is not in its vocab is a malformed file.
  void push_unk(const std::string& unk, std::vector<int64_t>& ids, std::vector<std::string>& tokens) const {
    const int64_t* uid = vocab_.find(unk);
    if (!uid) throw FormatError("tokenizer.json: model.unk_token '" + unk + "' is not in the vocab");
    ids.push_back(*uid);
    tokens.push_back(unk);
  }

  Vocab vocab_;
};

}  // namespace nibble::tok
