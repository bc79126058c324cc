// Tokenizer pieces on hand-derivable inputs: GPT-2 byte <-> char table, HF split behaviours,
// Metaspace prepend schemes, BPE merge order / byte fallback / unk fusing, WordPiece, Unigram
// Viterbi, decoders.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/tokenizer.h"
#include "test_support.h"
#include "tokenizer/tok_internal.h"

using namespace nibble;
using nlohmann::json;

namespace {

// A tokenizer.json with the given model and optional stages, loaded through the public API.
Tokenizer load(const test::TempDir& dir, json model, json pre = nullptr, json norm = nullptr,
               json dec = nullptr, json added = json::array()) {
  json j = {{"version", "1.0"},     {"added_tokens", added},     {"normalizer", norm},
            {"pre_tokenizer", pre}, {"post_processor", nullptr}, {"decoder", dec},
            {"model", model}};
  std::ofstream(dir / "tokenizer.json") << j.dump();
  return Tokenizer::from_file(dir / "tokenizer.json");
}

std::vector<std::string> texts(const std::vector<tok::Piece>& pieces) {
  std::vector<std::string> out;
  for (const auto& p : pieces) out.push_back(p.text);
  return out;
}

std::vector<std::string> split(const std::string& s, tok::SplitBehavior b, bool invert = false) {
  auto m = tok::char_matches(s, [](char32_t c) { return c == '-'; });
  std::vector<std::string> out;
  for (auto [x, y] : tok::split_ranges(s, m, b, invert)) out.push_back(s.substr(x, y - x));
  return out;
}

const std::string kMeta = "\xE2\x96\x81";  // U+2581

}  // namespace

TEST(TokenizerByteLevel, Gpt2Table) {
  EXPECT_EQ(tok::byte_to_char_utf8(' '), "\xC4\xA0");   // U+0120 'Ġ'
  EXPECT_EQ(tok::byte_to_char_utf8('\n'), "\xC4\x8A");  // U+010A 'Ċ'
  EXPECT_EQ(tok::byte_to_char_utf8('a'), "a");
  EXPECT_EQ(tok::byte_to_char_utf8(0xAD), "\xC5\x83");  // the 68th unprintable byte -> U+0143
  EXPECT_EQ(tok::byte_to_char_utf8(0xFF), "\xC3\xBF");  // printable Latin-1 stands for itself
  for (int b = 0; b < 256; ++b) {
    const std::string& u = tok::byte_to_char_utf8(uint8_t(b));
    size_t i = 0;
    EXPECT_EQ(tok::char_to_byte(tok::next_cp(u, i)), b);
  }
  EXPECT_EQ(tok::char_to_byte(U'\u2581'), -1);
  EXPECT_EQ(tok::byte_level_encode("a b\xC3\xA9"),
            "a\xC4\xA0"
            "b\xC3\x83\xC2\xA9");
}

TEST(TokenizerSplit, Behaviours) {
  using B = tok::SplitBehavior;
  using V = std::vector<std::string>;
  EXPECT_EQ(split("a-b--c", B::Removed), (V{"a", "b", "c"}));
  EXPECT_EQ(split("a-b--c", B::Isolated), (V{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(split("a-b--c", B::MergedWithPrevious), (V{"a-", "b-", "-", "c"}));
  EXPECT_EQ(split("a-b--c", B::MergedWithNext), (V{"a", "-b", "-", "-c"}));
  EXPECT_EQ(split("a-b--c", B::Contiguous), (V{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(split("a-b--c", B::Removed, /*invert=*/true), (V{"-", "-", "-"}));
  EXPECT_EQ(split("-a", B::MergedWithPrevious), (V{"-", "a"}));
  EXPECT_EQ(split("", B::Isolated), V{});
}

TEST(TokenizerSplit, RegexPreTokenizerWithLookahead) {
  // GPT-2's "\s+(?!\S)" leaves the last space of a run to the following word.
  auto p =
      tok::make_pre_tokenizer(json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}},
                              {"t.json", "pre_tokenizer"});
  std::vector<tok::Piece> pieces{{"a   b", true, -1}};
  p->pre_tokenize(pieces);
  EXPECT_EQ(texts(pieces), (std::vector<std::string>{"a", "\xC4\xA0\xC4\xA0",
                                                     "\xC4\xA0"
                                                     "b"}));
}

TEST(TokenizerMetaspace, PrependSchemes) {
  auto run = [](const std::string& scheme, bool split, bool at_start) {
    auto p = tok::make_pre_tokenizer(
        json{{"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", scheme}, {"split", split}},
        {"t.json", "pre_tokenizer"});
    std::vector<tok::Piece> pieces{{"Hi you", at_start, -1}};
    p->pre_tokenize(pieces);
    return texts(pieces);
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(run("always", true, false), (V{kMeta + "Hi", kMeta + "you"}));
  EXPECT_EQ(run("first", true, true), (V{kMeta + "Hi", kMeta + "you"}));
  EXPECT_EQ(run("first", true, false), (V{"Hi", kMeta + "you"}));
  EXPECT_EQ(run("never", true, true), (V{"Hi", kMeta + "you"}));
  EXPECT_EQ(run("always", false, true), (V{kMeta + "Hi" + kMeta + "you"}));
}

TEST(TokenizerBpe, MergesApplyByRankNotPosition) {
  test::TempDir dir;
  json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}};
  // "b c" outranks "a b": abc -> a + bc, and (a, bc) has no merge.
  Tokenizer t1 =
      load(dir, {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"b c", "a b", "ab c"})}});
  EXPECT_EQ(t1.encode("abc").tokens, (std::vector<std::string>{"a", "bc"}));
  // Pair form of merges; "a b" first, then "ab c".
  Tokenizer t2 = load(dir, {{"type", "BPE"},
                            {"vocab", vocab},
                            {"merges", json::array({json::array({"a", "b"}), json::array({"b", "c"}),
                                                    json::array({"ab", "c"})})}});
  EXPECT_EQ(t2.encode("abc").ids, (std::vector<int64_t>{5}));
}

TEST(TokenizerBpe, EqualRanksMergeLeftmostFirst) {
  test::TempDir dir;
  Tokenizer t =
      load(dir, {{"type", "BPE"}, {"vocab", {{"a", 0}, {"aa", 1}}}, {"merges", json::array({"a a"})}});
  EXPECT_EQ(t.encode("aaa").tokens, (std::vector<std::string>{"aa", "a"}));
  EXPECT_EQ(t.encode("aaaa").tokens, (std::vector<std::string>{"aa", "aa"}));
}

TEST(TokenizerBpe, ByteFallbackAndFusedUnk) {
  test::TempDir dir;
  json vocab = {{"<unk>", 0}, {"a", 1}, {"<0xC3>", 2}, {"<0xA9>", 3}};
  Tokenizer fb = load(dir, {{"type", "BPE"},
                            {"vocab", vocab},
                            {"merges", json::array()},
                            {"unk_token", "<unk>"},
                            {"byte_fallback", true},
                            {"fuse_unk", true}});
  EXPECT_EQ(fb.encode("a\xC3\xA9").ids, (std::vector<int64_t>{1, 2, 3}));  // é -> <0xC3> <0xA9>
  EXPECT_EQ(fb.encode("axya").ids, (std::vector<int64_t>{1, 0, 1}));       // x, y: no byte tokens -> one unk
  Tokenizer nofuse = load(dir, {{"type", "BPE"},
                                {"vocab", vocab},
                                {"merges", json::array()},
                                {"unk_token", "<unk>"},
                                {"fuse_unk", false}});
  EXPECT_EQ(nofuse.encode("axya").ids, (std::vector<int64_t>{1, 0, 0, 1}));
}

TEST(TokenizerBpe, PrefixAndSuffix) {
  test::TempDir dir;
  json vocab = {{"a", 0}, {"##b", 1}, {"##b</w>", 2}, {"a##b", 3}, {"ab</w>", 4}};
  Tokenizer t = load(dir, {{"type", "BPE"},
                           {"vocab", vocab},
                           {"merges", json::array()},
                           {"continuing_subword_prefix", "##"},
                           {"end_of_word_suffix", "</w>"}});
  EXPECT_EQ(t.encode("abb").tokens, (std::vector<std::string>{"a", "##b", "##b</w>"}));
}

TEST(TokenizerWordPiece, GreedyLongestAndUnk) {
  test::TempDir dir;
  json vocab = {{"[UNK]", 0}, {"un", 1}, {"##aff", 2}, {"##able", 3}, {"una", 4}, {"##ffable", 5}, {"x", 6}};
  Tokenizer t = load(dir, {{"type", "WordPiece"}, {"vocab", vocab}, {"unk_token", "[UNK]"}},
                     {{"type", "WhitespaceSplit"}}, nullptr, {{"type", "WordPiece"}, {"prefix", "##"}});
  // Longest first from the left: "una" then "##ffable".
  EXPECT_EQ(t.encode("unaffable").tokens, (std::vector<std::string>{"una", "##ffable"}));
  EXPECT_EQ(t.encode("unq x").tokens, (std::vector<std::string>{"[UNK]", "x"}));
  EXPECT_EQ(t.decode({1, 2, 3, 6}), "unaffable x");
}

TEST(TokenizerUnigram, ViterbiPicksBestScore) {
  test::TempDir dir;
  auto model = [](double ab) {
    return json{{"type", "Unigram"},
                {"unk_id", 0},
                {"vocab", json::array({json::array({"<unk>", 0.0}), json::array({"a", -1.0}),
                                       json::array({"b", -1.0}), json::array({"ab", ab})})}};
  };
  Tokenizer t1 = load(dir, model(-1.5));
  EXPECT_EQ(t1.encode("abab").tokens, (std::vector<std::string>{"ab", "ab"}));  // -3 beats -4
  Tokenizer t2 = load(dir, model(-2.5));
  EXPECT_EQ(t2.encode("ab").tokens, (std::vector<std::string>{"a", "b"}));  // -2 beats -2.5
  // Unknown chars fuse into one unk whose token string is the text itself (as HF).
  Encoding e = t1.encode("acca");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(e.tokens, (std::vector<std::string>{"a", "cc", "a"}));
}

TEST(TokenizerUnigram, RepeatedPiecesLongPiecesAndLongUnknownRuns) {
  // The prefix walk (PieceTrie) offers what the vocab holds: a repeated piece has the later id
  // (as the vocab maps it), a piece longer than the text is never offered, and a long run of
  // unknown characters fuses into one unk (kept as a span, not built by prepending).
  test::TempDir dir;
  json vocab = json::array({json::array({"<unk>", 0.0}), json::array({"ab", -1.0}), json::array({"a", -1.0}),
                            json::array({"ab", -0.5}), json::array({"abcdefghij", -0.1})});
  Tokenizer t = load(dir, {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}});
  Encoding e = t.encode("ab");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{3}));
  EXPECT_EQ(t.encode("abcdefghi").tokens, (std::vector<std::string>{"ab", "cdefghi"}));
  EXPECT_EQ(t.encode("abcdefghij").ids, (std::vector<int64_t>{4}));
  const std::string unknown(100000, 'z');
  e = t.encode("a" + unknown + "ab");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{2, 0, 3}));
  EXPECT_EQ(e.tokens[1], unknown);
}

TEST(TokenizerNormalizers, ExpansionPastTheEncodeLimitIsRefused) {
  // A Replace that multiplies the text (each "a" -> 1000 bytes) would turn a 40 KB input into
  // 40 MB: past Tokenizer::kMaxEncodeBytes it is a FormatError naming the normalizer.
  test::TempDir dir;
  json norm = {{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", std::string(1000, 'x')}};
  json vocab = json::array({json::array({"<unk>", 0.0}), json::array({"x", -1.0})});
  Tokenizer t = load(dir, {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}}, nullptr, norm);
  EXPECT_EQ(t.encode(std::string(3, 'a')).ids.size(), 3000u);  // small inputs are fine
  try {
    t.encode(std::string(40000, 'a'));
    ADD_FAILURE() << "no error";
  } catch (const FormatError& err) {
    EXPECT_NE(std::string(err.what()).find("Replace normalizer expands the text past 33554432"), std::string::npos)
        << err.what();
  }
}

// Equal scores: a run of one character has many segmentations of the same score, and HF's
// choice among them follows from tokenizers' Unigram::encode_optimized (model.rs):
//   - start positions are visited left to right, and from each the trie offers the pieces by
//     increasing length;
//   - the best path ending at a position is replaced only when a candidate is strictly better
//     (`candidate_best_path_score > target_node.best_path_score`), so of equal candidates the
//     first offered stays: the one starting furthest left, i.e. the longest last piece;
//   - the result is read back from the end, following those choices.
// With x = -1, xx = -2, "xxxxx" ends in "xx" (offered from position 3 before "x" from 4), so do
// the pieces before it, and the odd "x" comes first: x xx xx.
// Scores that are not exact binary fractions tie only up to rounding, and then the rounding of
// the sums decides; the sums are the same (piece score + best path so far) once the scores are.
// They are not as a correctly rounded parse reads them: HF reads tokenizer.json with serde_json's
// default number parser (digits as an integer, then one division by 10^15 here), and t5's
// "---" = -12.130167007446289 becomes -12.130167007446287 there. With that score a run of 13
// dashes ties "---" "---" "-" "---" "---" below the alternatives, which a correctly parsed
// -12.130167007446289 orders "-" first.
// (Every expectation here checked against tokenizers 0.23.3.)
TEST(TokenizerUnigram, EqualScoresTieBreakAsHf) {
  test::TempDir dir;
  auto model = [](std::vector<std::pair<std::string, double>> pieces) {
    json vocab = json::array({json::array({"<unk>", 0.0})});
    for (const auto& [p, score] : pieces) vocab.push_back(json::array({p, score}));
    return json{{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}};
  };
  using V = std::vector<std::string>;
  Tokenizer t = load(dir, model({{"x", -1.0}, {"xx", -2.0}}));
  EXPECT_EQ(t.encode("xx").tokens, (V{"xx"}));
  EXPECT_EQ(t.encode("xxx").tokens, (V{"x", "xx"}));
  EXPECT_EQ(t.encode("xxxxx").tokens, (V{"x", "xx", "xx"}));
  EXPECT_EQ(t.encode("xxxxxx").tokens, (V{"xx", "xx", "xx"}));
  V want(20, "xx");  // a long run: 39 = one x, then nineteen xx
  want.front() = "x";
  EXPECT_EQ(t.encode(std::string(39, 'x')).tokens, want);
  // Three lengths: the longest piece ends last, the remainder goes first.
  Tokenizer t3 = load(dir, model({{"x", -1.0}, {"xx", -2.0}, {"xxx", -3.0}}));
  EXPECT_EQ(t3.encode("xxxx").tokens, (V{"x", "xxx"}));
  EXPECT_EQ(t3.encode("xxxxxxxx").tokens, (V{"xx", "xxx", "xxx"}));
  // Other characters: "xy" (from position 1) is offered before "y" (from 2) for the end.
  Tokenizer ty = load(dir, model({{"x", -1.0}, {"xx", -2.0}, {"y", -1.0}, {"xy", -2.0}}));
  EXPECT_EQ(ty.encode("xxy").tokens, (V{"x", "xy"}));
  EXPECT_EQ(ty.encode("xxxy").tokens, (V{"xx", "xy"}));
  // Scores that tie only up to rounding (-3.2 and -6.4): HF gives x xx xx x for six x's.
  Tokenizer tr = load(dir, model({{"x", -3.2}, {"xx", -6.4}}));
  EXPECT_EQ(tr.encode("xxxxxx").tokens, (V{"x", "xx", "xx", "x"}));
  EXPECT_EQ(tr.encode("xxxxxxx").tokens, (V{"x", "xx", "xx", "xx"}));
  // t5_small's scores of "-" and "---", as the file writes them.
  Tokenizer td = load(dir, model({{"-", -5.129043102264404}, {"---", -12.130167007446289}}));
  EXPECT_EQ(td.encode("-------").tokens, (V{"---", "---", "-"}));
  EXPECT_EQ(td.encode("--------").tokens, (V{"-", "-", "---", "---"}));
  EXPECT_EQ(td.encode("-----------").tokens, (V{"---", "---", "-", "---", "-"}));
  EXPECT_EQ(td.encode(std::string(13, '-')).tokens, (V{"---", "---", "-", "---", "---"}));
  EXPECT_EQ(td.encode(std::string(14, '-')).tokens, (V{"---", "---", "-", "---", "-", "---"}));
  // The parse itself: serde_json's value, one ulp above the correctly rounded one.
  EXPECT_EQ(tok::serde_json_f64(-12.130167007446289), std::nextafter(-12.130167007446289, 0.0));
  EXPECT_EQ(tok::serde_json_f64(-5.129043102264404), -5.129043102264404);
  EXPECT_EQ(tok::serde_json_f64(-2.0), -2.0);
}

TEST(TokenizerDecoders, ByteFallbackFuseStrip) {
  auto d = tok::make_decoder(json::parse(R"({"type":"Sequence","decoders":[
      {"type":"Replace","pattern":{"String":"\u2581"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},
      {"type":"Strip","content":" ","start":1,"stop":0}]})"),
                             {"t.json", "decoder"});
  auto out = d->decode_chain({kMeta + "caf", "<0xC3>", "<0xA9>", kMeta + "x", "<0xFF>"});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0], "caf\xC3\xA9 x\xEF\xBF\xBD");  // invalid byte run -> one U+FFFD per byte
}

TEST(TokenizerDecoders, ByteLevelLossy) {
  auto d = tok::make_decoder(json{{"type", "ByteLevel"}}, {"t.json", "decoder"});
  // "Ġ" = space; a lone 0xC3 byte (char U+00C3) becomes U+FFFD.
  auto out = d->decode_chain({"\xC4\xA0hi", "\xC3\x83"});
  EXPECT_EQ(out, (std::vector<std::string>{" hi\xEF\xBF\xBD"}));
}

TEST(TokenizerAddedTokens, LongestMatchAndStrip) {
  test::TempDir dir;
  json added = json::array({
      {{"id", 2},
       {"content", "<a>"},
       {"special", true},
       {"normalized", false},
       {"lstrip", false},
       {"rstrip", true},
       {"single_word", false}},
      {{"id", 3},
       {"content", "<a><b>"},
       {"special", false},
       {"normalized", false},
       {"lstrip", true},
       {"rstrip", false},
       {"single_word", false}},
  });
  Tokenizer t =
      load(dir, {{"type", "WordLevel"}, {"vocab", {{"[UNK]", 0}, {"x", 1}}}, {"unk_token", "[UNK]"}},
           {{"type", "WhitespaceSplit"}}, nullptr, nullptr, added);
  EXPECT_EQ(t.encode("x  <a><b>x").ids, (std::vector<int64_t>{1, 3, 1}));  // longest wins, lstrip eats spaces
  Encoding e = t.encode("x<a>  x");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{1, 2, 1}));
  EXPECT_EQ(e.tokens[1], "<a>  ");  // rstrip: the token's text keeps the spaces it swallowed
  EXPECT_TRUE(t.is_special(2));
  EXPECT_FALSE(t.is_special(3));
  EXPECT_EQ(t.decode({1, 2, 3}, true), "x <a><b>");  // no decoder: tokens joined by spaces
  EXPECT_EQ(t.vocab_size(), 4);
}

TEST(TokenizerNormalizers, BertLowercaseAndUnicodeForms) {
  tok::Where w{"t.json", "normalizer"};
  auto bert = tok::make_normalizer(json{{"type", "BertNormalizer"},
                                        {"clean_text", true},
                                        {"handle_chinese_chars", true},
                                        {"strip_accents", nullptr},
                                        {"lowercase", true}},
                                   w);
  // Control char dropped, tab -> space, CJK spaced, accents stripped (follows lowercase), lowercased.
  EXPECT_EQ(bert->normalize("A\x01\tCaf\xC3\xA9\xE6\xBC\xA2"), "a cafe \xE6\xBC\xA2 ");
  // Lowercase maps char by char: a final capital sigma becomes σ (U+03C3), not ς.
  auto lower = tok::make_normalizer(json{{"type", "Lowercase"}}, w);
  EXPECT_EQ(lower->normalize("\xCE\x91\xCE\xA3"), "\xCE\xB1\xCF\x83");
  EXPECT_EQ(tok::make_normalizer(json{{"type", "NFKC"}}, w)->normalize("\xEF\xAC\x81"), "fi");  // ﬁ ligature
  EXPECT_EQ(tok::make_normalizer(json{{"type", "NFC"}}, w)->normalize("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(tok::make_normalizer(json{{"type", "NFD"}}, w)->normalize("\xC3\xA9"), "e\xCC\x81");
  auto strip = tok::make_normalizer(json{{"type", "Strip"}, {"strip_left", false}, {"strip_right", true}}, w);
  EXPECT_EQ(strip->normalize("  a \xE3\x80\x80"), "  a");  // U+3000 is whitespace
  auto seq = tok::make_normalizer(json::parse(R"({"type":"Sequence","normalizers":[
      {"type":"Prepend","prepend":"\u2581"},{"type":"Replace","pattern":{"Regex":" +"},"content":"\u2581"}]})"),
                                  w);
  EXPECT_EQ(seq->normalize("a  b c"), kMeta + "a" + kMeta + "b" + kMeta + "c");
  EXPECT_EQ(seq->normalize(""), "");  // Prepend leaves empty text alone
  EXPECT_EQ(
      tok::make_normalizer(json{{"type", "Precompiled"}, {"precompiled_charsmap", ""}}, w)->normalize("Ab"),
      "Ab");
}

TEST(TokenizerSplit, UnicodeClassesInPcre2) {
  // The Qwen2 pattern: letters with an optional leading non-letter, single digits, CJK as letters.
  auto p = tok::make_pre_tokenizer(
      json{
          {"type", "Split"},
          {"pattern",
           {{"Regex",
             R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
          {"behavior", "Isolated"},
          {"invert", false}},
      {"t.json", "pre_tokenizer"});
  std::vector<tok::Piece> pieces{{"I'M 42 \xE6\xBC\xA2\xE5\xAD\x97!\n", true, -1}};
  p->pre_tokenize(pieces);
  EXPECT_EQ(texts(pieces),
            (std::vector<std::string>{"I", "'M", " ", "4", "2", " \xE6\xBC\xA2\xE5\xAD\x97", "!\n"}));
}
