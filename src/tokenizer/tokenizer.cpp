// Tokenizer: loads tokenizer.json (+ tokenizer_config.json, special_tokens_map.json) into the
// pipeline of tok_internal.h and runs it as HF `tokenizers` does: added tokens out first,
// normalizer, pre-tokenizer, model per piece, post-processor; decode through the decoder.
#include "nibble/tokenizer.h"

#include <algorithm>
#include <charconv>
#include <set>

#include "io/read_file.h"
#include "nibble/error.h"
#include "tokenizer/added_vocab.h"
#include "tokenizer/tok_internal.h"

namespace nibble {

namespace fs = std::filesystem;
using tok::Json;
using tok::Where;

struct Tokenizer::Impl {
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Model> model;
  std::unique_ptr<tok::PostProcessor> post_processor;
  std::unique_ptr<tok::Decoder> decoder;
  tok::AddedVocab added;
  Json config = Json::object();
  std::optional<std::string> bos, eos, unk, pad;
  std::vector<int64_t> special_ids;  // transformers' all_special_ids (see the header)
};

namespace {

Json read_json(const fs::path& p) {
  const std::string text = io::read_text_file(p);
  try {
    return io::parse_json<Json>(text);
  } catch (const Json::exception& e) {
    throw FormatError(p.filename().string() + ": malformed JSON (" + e.what() + ")");
  }
}

// tokenizer_config.json's special added_tokens_decoder entries, additional_special_tokens (from
// special_tokens_map.json when it has them) and the named special tokens, as ids.
std::vector<int64_t> transformers_special_ids(const Tokenizer& t, const Json& config, const Json& map) {
  std::set<int64_t> ids;
  if (auto it = config.find("added_tokens_decoder"); it != config.end() && it->is_object()) {
    for (auto e = it->begin(); e != it->end(); ++e) {
      if (!e.value().is_object() || !e.value().value("special", false)) continue;
      int64_t id = 0;
      const std::string& key = e.key();
      auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size())
        throw FormatError("tokenizer_config.json: added_tokens_decoder key '" + key + "' is not a token id");
      ids.insert(id);
    }
  }
  const Json& extra = map.contains("additional_special_tokens") ? map : config;
  if (auto it = extra.find("additional_special_tokens"); it != extra.end() && it->is_array())
    for (const auto& j : *it)
      if (auto s = tok::special_token_text(j))
        if (auto id = t.token_to_id(*s)) ids.insert(*id);
  for (const auto& s : {t.bos_token(), t.eos_token(), t.unk_token(), t.pad_token()})
    if (s)
      if (auto id = t.token_to_id(*s)) ids.insert(*id);
  return {ids.begin(), ids.end()};
}

}  // namespace

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const fs::path& tokenizer_json) {
  return from_json(read_json(tokenizer_json), tokenizer_json.filename().string());
}

Tokenizer Tokenizer::from_json(const nlohmann::json& j, const std::string& origin) {
  Tokenizer t;
  Impl& m = *t.impl_;
  Where root{origin, ""};
  try {
    if (!j.is_object()) tok::format_error(root, "top level is not a JSON object");
    auto part = [&](const char* key) -> const Json* {
      auto it = j.find(key);
      return it == j.end() || it->is_null() ? nullptr : &*it;
    };
    if (auto n = part("normalizer")) m.normalizer = tok::make_normalizer(*n, root.at("normalizer"));
    if (auto p = part("pre_tokenizer"))
      m.pre_tokenizer = tok::make_pre_tokenizer(*p, root.at("pre_tokenizer"));
    auto mj = part("model");
    if (!mj) tok::format_error(root.at("model"), "is missing");
    m.model = tok::make_model(*mj, root.at("model"));
    if (auto p = part("post_processor"))
      m.post_processor = tok::make_post_processor(*p, root.at("post_processor"));
    if (auto d = part("decoder")) m.decoder = tok::make_decoder(*d, root.at("decoder"));
    if (auto a = part("added_tokens"))
      m.added.load(*a, root.at("added_tokens"), *m.model, m.normalizer.get());
  } catch (const Json::exception& e) {
    throw FormatError(root.file + ": " + e.what());
  }
  return t;
}

Tokenizer Tokenizer::from_pretrained(const fs::path& dir) {
  fs::path tj = dir / "tokenizer.json";
  if (!fs::exists(tj)) throw IoError("no tokenizer.json in " + dir.string());
  Json config = nullptr, map = nullptr;
  if (fs::exists(dir / "tokenizer_config.json")) config = read_json(dir / "tokenizer_config.json");
  if (fs::exists(dir / "special_tokens_map.json")) map = read_json(dir / "special_tokens_map.json");
  return from_json(read_json(tj), config, map);
}

Tokenizer Tokenizer::from_json(const nlohmann::json& tokenizer, const nlohmann::json& tokenizer_config,
                               const nlohmann::json& special_tokens_map) {
  Tokenizer t = from_json(tokenizer, "tokenizer.json");
  Impl& m = *t.impl_;
  Json map = Json::object();
  if (!tokenizer_config.is_null()) {
    if (!tokenizer_config.is_object())
      throw FormatError("tokenizer_config.json: top level is not a JSON object");
    m.config = tokenizer_config;
  }
  if (!special_tokens_map.is_null()) {
    if (!special_tokens_map.is_object())
      throw FormatError("special_tokens_map.json: top level is not a JSON object");
    map = special_tokens_map;
  }
  // transformers lets special_tokens_map.json override tokenizer_config.json.
  auto pick = [&](const char* key) -> std::optional<std::string> {
    if (map.contains(key))
      if (auto s = tok::special_token_text(map[key])) return s;
    if (m.config.contains(key))
      if (auto s = tok::special_token_text(m.config[key])) return s;
    return std::nullopt;
  };
  m.bos = pick("bos_token");
  m.eos = pick("eos_token");
  m.unk = pick("unk_token");
  m.pad = pick("pad_token");
  m.special_ids = transformers_special_ids(t, m.config, map);
  return t;
}

Encoding Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  if (text.size() > kMaxEncodeBytes)
    throw FormatError(detail::str("tokenizer: the input text is ", text.size(), " bytes, over the limit of ",
                                  kMaxEncodeBytes, " bytes for one encode (encode it in parts)"));
  if (!tok::valid_utf8(text)) throw FormatError("tokenizer: the input text is not valid UTF-8");
  std::vector<tok::Piece> pieces;
  if (!text.empty()) pieces.push_back(tok::Piece{std::string(text), true, -1});
  m.added.extract_and_normalize(pieces, m.normalizer.get());
  if (m.pre_tokenizer) m.pre_tokenizer->pre_tokenize(pieces);
  Encoding e;
  for (const auto& p : pieces) {
    if (p.added_id >= 0) {
      e.ids.push_back(p.added_id);
      e.tokens.push_back(p.text);  // HF keeps the matched text (with any stripped spaces)
    } else {
      m.model->tokenize(p.text, e.ids, e.tokens);
    }
  }
  if (add_special_tokens && m.post_processor) m.post_processor->process(e.ids, e.tokens);
  return e;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    const std::string* s = nullptr;
    if (const tok::AddedToken* a = m.added.by_id(id))
      s = &a->decode_form;
    else
      s = m.model->id_to_token(id);
    if (!s) continue;  // HF drops ids it does not know
    if (skip_special_tokens && m.added.is_special_content(*s)) continue;
    tokens.push_back(*s);
  }
  if (!m.decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  std::string out;
  for (const auto& s : m.decoder->decode_chain(std::move(tokens))) out += s;
  return out;
}

std::string Tokenizer::decode_text(const std::vector<int64_t>& ids) const {
  const std::vector<int64_t>& special = impl_->special_ids;
  std::vector<int64_t> kept;
  kept.reserve(ids.size());
  for (int64_t id : ids)
    if (!std::binary_search(special.begin(), special.end(), id)) kept.push_back(id);
  return decode(kept, /*skip_special_tokens=*/true);
}

const std::vector<int64_t>& Tokenizer::all_special_ids() const {
  return impl_->special_ids;
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const int64_t* id = impl_->added.id_of(token)) return *id;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int64_t id) const {
  if (const tok::AddedToken* a = impl_->added.by_id(id)) return a->content;
  if (const std::string* s = impl_->model->id_to_token(id)) return *s;
  return std::nullopt;
}

int64_t Tokenizer::vocab_size() const {
  int64_t n = impl_->model->vocab_size();
  for (const auto& [id, a] : impl_->added.all())
    if (!impl_->model->id_to_token(id)) ++n;
  return n;
}

bool Tokenizer::is_special(int64_t id) const {
  const tok::AddedToken* a = impl_->added.by_id(id);
  return a && a->special;
}

std::optional<std::string> Tokenizer::bos_token() const {
  return impl_->bos;
}
std::optional<std::string> Tokenizer::eos_token() const {
  return impl_->eos;
}
std::optional<std::string> Tokenizer::unk_token() const {
  return impl_->unk;
}
std::optional<std::string> Tokenizer::pad_token() const {
  return impl_->pad;
}
const nlohmann::json& Tokenizer::tokenizer_config() const {
  return impl_->config;
}

}  // namespace nibble
