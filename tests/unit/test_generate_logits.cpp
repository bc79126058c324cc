// The logits processors on hand-made logits against the rule each one states (transformers'
// semantics), the categorical sampler's frequencies, the length/validation rules of
// resolve_decoding, and TextStreamer on a fake decoder with sentencepiece spaces and
// byte-fallback pieces of a multi-byte character.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "nibble/error.h"
#include "nibble/generate.h"
#include "nibble/generation_config.h"
#include "test_support.h"

using namespace nibble;

namespace {

const float kInf = std::numeric_limits<float>::infinity();

std::vector<float> log_probs(std::vector<double> p) {
  std::vector<float> x;
  for (double v : p) x.push_back(float(std::log(v)));
  return x;
}

std::vector<bool> kept(const std::vector<float>& x) {
  std::vector<bool> k;
  for (float v : x) k.push_back(v != -kInf);
  return k;
}

std::vector<double> softmax(const std::vector<float>& x) {
  double mx = *std::max_element(x.begin(), x.end()), s = 0;
  std::vector<double> p;
  for (float v : x) p.push_back(std::exp(double(v) - mx)), s += p.back();
  for (double& v : p) v /= s;
  return p;
}

}  // namespace

TEST(GenerateLogits, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  std::vector<float> x{2.0f, -2.0f, 1.0f, 0.5f, -1.0f};
  std::vector<int64_t> seen{0, 1, 1, 3};  // 1 twice: penalized once
  logits::repetition_penalty(x, seen, 2.0);
  EXPECT_EQ(x, (std::vector<float>{1.0f, -4.0f, 1.0f, 0.25f, -1.0f}));
  std::vector<float> y{3.0f};
  logits::repetition_penalty(y, std::vector<int64_t>{0}, 0.5);  // < 1 favours repeats
  EXPECT_EQ(y[0], 6.0f);
  EXPECT_THROW(logits::repetition_penalty(y, std::vector<int64_t>{0}, 0.0), ConfigError);
}

TEST(GenerateLogits, SuppressAndTemperature) {
  std::vector<float> x{1.0f, 2.0f, 3.0f};
  logits::suppress(x, std::vector<int64_t>{1, 7});  // 7 is outside the row: ignored
  EXPECT_EQ(x[1], -kInf);
  logits::temperature(x, 0.5);
  EXPECT_EQ(x[0], 2.0f);
  EXPECT_EQ(x[2], 6.0f);
  EXPECT_THROW(logits::temperature(x, 0.0), ConfigError);
}

TEST(GenerateLogits, TopKKeepsTiesAtTheKthValue) {
  std::vector<float> base{1.0f, 3.0f, 2.0f, 3.0f, 0.0f};
  auto x = base;
  logits::top_k(x, 1);  // the k-th largest is 3, shared by two tokens: both stay
  EXPECT_EQ(kept(x), (std::vector<bool>{false, true, false, true, false}));
  x = base;
  logits::top_k(x, 3);
  EXPECT_EQ(kept(x), (std::vector<bool>{false, true, true, true, false}));
  EXPECT_EQ(x[2], 2.0f);  // kept values unchanged
  x = base;
  logits::top_k(x, 99);  // more than the vocabulary: all stay
  EXPECT_EQ(x, base);
  x = base;
  logits::top_k(x, 1, /*min_tokens_to_keep=*/4);
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, true, true, false}));
  EXPECT_THROW(logits::top_k(x, 0), ConfigError);
}

TEST(GenerateLogits, TopPKeepsSmallestSetReachingP) {
  const std::vector<double> p{0.1, 0.2, 0.3, 0.4};
  auto x = log_probs(p);
  logits::top_p(x, 0.5);  // 0.4 < 0.5; 0.4 + 0.3 >= 0.5
  EXPECT_EQ(kept(x), (std::vector<bool>{false, false, true, true}));
  x = log_probs(p);
  logits::top_p(x, 0.35);
  EXPECT_EQ(kept(x), (std::vector<bool>{false, false, false, true}));
  x = log_probs(p);
  logits::top_p(x, 0.95);
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, true, true}));
  x = log_probs(p);
  logits::top_p(x, 0.0);  // removes everything but min_tokens_to_keep = 1
  EXPECT_EQ(kept(x), (std::vector<bool>{false, false, false, true}));
  x = log_probs(p);
  logits::top_p(x, 0.0, /*min_tokens_to_keep=*/2);
  EXPECT_EQ(kept(x), (std::vector<bool>{false, false, true, true}));
  x = log_probs(p);
  logits::top_p(x, 1.0);
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, true, true}));
  EXPECT_THROW(logits::top_p(x, 1.5), ConfigError);
}

TEST(GenerateLogits, TopPTiesRemoveLowerIdsFirst) {
  // Four equal tokens, p = 0.6: two are not enough (0.5), three are. Ascending stable order
  // removes the lowest id first.
  std::vector<float> x(4, 0.0f);
  logits::top_p(x, 0.6);
  EXPECT_EQ(kept(x), (std::vector<bool>{false, true, true, true}));
}

TEST(GenerateLogits, TopPRandomRowsSatisfyTheDefinition) {
  uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::uniform_real_distribution<double> ud(0.05, 0.95);
  for (int rep = 0; rep < 200; ++rep) {
    std::vector<float> x(50);
    for (float& v : x) v = nd(rng);
    const double p = ud(rng);
    auto prob = softmax(x);
    logits::top_p(x, p);
    double in = 0, smallest_in = 1, largest_out = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i] != -kInf)
        in += prob[i], smallest_in = std::min(smallest_in, prob[i]);
      else
        largest_out = std::max(largest_out, prob[i]);
    }
    EXPECT_GE(in, p - 1e-6);                // the kept set reaches p
    EXPECT_LT(in - smallest_in, p + 1e-6);  // and is the smallest such set
    EXPECT_LE(largest_out, smallest_in);    // made of the largest tokens
  }
}

TEST(GenerateLogits, MinPScalesByTheTopProbability) {
  const std::vector<double> p{0.5, 0.3, 0.15, 0.05};
  auto x = log_probs(p);
  logits::min_p(x, 0.2);  // threshold 0.1
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, true, false}));
  x = log_probs(p);
  logits::min_p(x, 0.5);  // threshold 0.25
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, false, false}));
  x = log_probs(p);
  logits::min_p(x, 1.0, /*min_tokens_to_keep=*/2);
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, false, false}));
  x = log_probs(p);
  logits::min_p(x, 0.0);
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, true, true}));
  EXPECT_THROW(logits::min_p(x, -0.1), ConfigError);
}

TEST(GenerateLogits, ArgmaxTakesTheFirstMaximum) {
  std::vector<float> x{0.0f, 5.0f, -1.0f, 5.0f};
  EXPECT_EQ(logits::argmax(x), 1);
}

TEST(GenerateLogits, SampleFollowsTheDistribution) {
  std::mt19937_64 rng(1234);
  std::vector<float> x{float(std::log(0.2)), float(std::log(0.8)), -kInf};
  const int n = 20000;
  int ones = 0;
  for (int i = 0; i < n; ++i) {
    int64_t t = logits::sample(x, rng);
    ASSERT_TRUE(t == 0 || t == 1);  // a masked token is never drawn
    ones += t == 1;
  }
  // 0.8 +- 7 standard deviations (sqrt(0.16 / n) = 0.0028)
  EXPECT_NEAR(double(ones) / n, 0.8, 0.02);
  std::mt19937_64 a(99), b(99);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(logits::sample(x, a), logits::sample(x, b));
}

TEST(GenerateDecoding, LengthsAndDefaults) {
  GenerationConfig g;
  g.eos_token_id = {2};
  DecodingParams d = resolve_decoding(g, {}, 10, 512);
  EXPECT_FALSE(d.do_sample);
  EXPECT_EQ(d.max_new_tokens, 20);
  EXPECT_EQ(d.top_k, 50);
  EXPECT_EQ(d.eos_token_id, std::vector<int64_t>{2});
  EXPECT_EQ(resolve_decoding(g, {}, 500, 512).max_new_tokens, 12);  // capped at max_position_embeddings
  g.max_length = 64;
  EXPECT_EQ(resolve_decoding(g, {}, 10, 512).max_new_tokens, 54);  // max_length counts the prompt
  g.max_new_tokens = 7;
  EXPECT_EQ(resolve_decoding(g, {}, 10, 512).max_new_tokens, 7);
  GenerateOptions o;
  o.max_new_tokens = 3;
  o.do_sample = true;
  o.top_k = 0;
  o.eos_token_id = std::vector<int64_t>{};
  d = resolve_decoding(g, o, 10, 512);
  EXPECT_EQ(d.max_new_tokens, 3);
  EXPECT_TRUE(d.do_sample);
  EXPECT_EQ(d.top_k, 0);
  EXPECT_TRUE(d.eos_token_id.empty());

  auto throws = [&](auto edit) {
    GenerateOptions bad;
    bad.do_sample = true;
    edit(bad);
    EXPECT_THROW(resolve_decoding(g, bad, 10, 512), ConfigError);
  };
  throws([](GenerateOptions& b) { b.temperature = 0.0; });
  throws([](GenerateOptions& b) { b.top_p = 1.1; });
  throws([](GenerateOptions& b) { b.min_p = -1.0; });
  throws([](GenerateOptions& b) { b.top_k = -1; });
  throws([](GenerateOptions& b) { b.repetition_penalty = 0.0; });
  throws([](GenerateOptions& b) { b.max_new_tokens = 0; });
  throws([](GenerateOptions& b) { b.min_new_tokens = -1; });
  g.num_beams = 4;  // beam search: refused, never silently greedy
  EXPECT_THROW(resolve_decoding(g, {}, 10, 512), UnsupportedError);
}

// argmax_only(): greedy with no processor changing a logit at this point, so a caller may take
// the argmax where the logits are and accept() it; accept() then stops as step() would.
TEST(GenerateDecoding, ArgmaxOnlyAndAccept) {
  DecodingParams d;
  d.max_new_tokens = 4;
  d.eos_token_id = {2};
  const std::vector<int64_t> prompt = {5, 6};
  {
    SequenceDecoder s(d, prompt, {});
    EXPECT_TRUE(s.argmax_only());
    std::vector<float> x = {0.0f, 3.0f, 1.0f, 3.0f};
    EXPECT_EQ(s.step(x), 1);    // the first maximum
    EXPECT_EQ(s.accept(3), 3);  // a token picked elsewhere
    EXPECT_FALSE(s.done());
    EXPECT_EQ(s.accept(2), 2);  // eos
    EXPECT_TRUE(s.done());
    EXPECT_EQ(s.finish_reason(), FinishReason::Eos);
    EXPECT_EQ(s.ids(), (std::vector<int64_t>{5, 6, 1, 3, 2}));
  }
  {
    SequenceDecoder s(d, prompt, {});
    for (int i = 0; i < 4; ++i) s.accept(1);
    EXPECT_TRUE(s.done());
    EXPECT_EQ(s.finish_reason(), FinishReason::Length);
  }
  auto with = [&](auto edit) {
    DecodingParams e = d;
    edit(e);
    return SequenceDecoder(e, prompt, {});
  };
  EXPECT_FALSE(with([](DecodingParams& e) { e.do_sample = true; }).argmax_only());
  EXPECT_FALSE(with([](DecodingParams& e) { e.repetition_penalty = 1.2; }).argmax_only());
  EXPECT_FALSE(with([](DecodingParams& e) { e.presence_penalty = 0.5; }).argmax_only());
  EXPECT_FALSE(with([](DecodingParams& e) { e.frequency_penalty = 0.5; }).argmax_only());
  EXPECT_FALSE(with([](DecodingParams& e) { e.no_repeat_ngram_size = 2; }).argmax_only());
  // eos is suppressed until min_new_tokens / min_length are reached: not argmax_only until then
  SequenceDecoder m = with([](DecodingParams& e) { e.min_new_tokens = 2; });
  EXPECT_FALSE(m.argmax_only());
  std::vector<float> x = {0.0f, 1.0f, 5.0f};  // eos (2) is the maximum but suppressed
  EXPECT_EQ(m.step(x), 1);
  EXPECT_FALSE(m.argmax_only());
  m.accept(1);
  EXPECT_TRUE(m.argmax_only());
  SequenceDecoder l = with([](DecodingParams& e) { e.min_length = 3; });  // counts the prompt
  EXPECT_FALSE(l.argmax_only());
  l.accept(1);
  EXPECT_TRUE(l.argmax_only());
}

namespace {

// A tiny fake tokenizer: "▁" pieces become spaces and the decode drops the leading space (as
// sentencepiece's Metaspace decoder), ids 10 and 11 are the two bytes of "é" (byte fallback);
// an incomplete UTF-8 sequence decodes to U+FFFD.
std::string fake_decode(const std::vector<int64_t>& ids) {
  static const std::vector<std::string> pieces{"\xE2\x96\x81Hello", "\xE2\x96\x81w", "orld", "!",
                                               "\xE2\x96\x81"
                                               "caf"};
  std::string bytes;
  for (int64_t id : ids) {
    if (id == 10)
      bytes += "\xC3";
    else if (id == 11)
      bytes += "\xA9";
    else
      bytes += pieces.at(size_t(id));
  }
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    if (bytes.compare(i, 3, "\xE2\x96\x81") == 0)
      out += ' ', i += 3;
    else if (uint8_t(bytes[i]) == 0xC3 && (i + 1 >= bytes.size() || (uint8_t(bytes[i + 1]) & 0xC0) != 0x80))
      out += "\xEF\xBF\xBD", i += 1;
    else
      out += bytes[i++];
  }
  if (!out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

}  // namespace

TEST(GenerateStreamer, SpacesAndMultiByteCharacters) {
  const std::vector<int64_t> ids{0, 1, 2, 4, 10, 11, 3};
  TextStreamer s(fake_decode);
  std::string streamed;
  std::vector<std::string> chunks;
  for (int64_t id : ids) {
    std::string piece = s.push(std::vector<int64_t>{id});
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "a partial character was printed";
    chunks.push_back(piece);
    streamed += piece;
  }
  streamed += s.flush();
  EXPECT_EQ(streamed, fake_decode(ids));
  EXPECT_EQ(streamed, "Hello world caf\xC3\xA9!");
  EXPECT_EQ(chunks[1], " w");  // the space of a non-first token is kept
  EXPECT_EQ(chunks[4], "");    // the first byte of "é" is held back
  EXPECT_EQ(chunks[5], "\xC3\xA9");
}

TEST(GenerateStreamer, FlushReleasesAnIncompleteTail) {
  TextStreamer s(fake_decode);
  EXPECT_EQ(s.push(std::vector<int64_t>{0, 10}), "");
  EXPECT_EQ(s.flush(), "Hello\xEF\xBF\xBD");
}

TEST(GenerateLogits, NoRepeatNgramBansCompletions) {
  const std::vector<int64_t> seq{1, 2, 3, 1, 2, 4, 1, 2};
  std::vector<float> x(8, 0.0f);
  logits::no_repeat_ngram(x, seq, 3);  // (1, 2) was followed by 3 and by 4
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, true, false, false, true, true, true}));
  x.assign(8, 0.0f);
  logits::no_repeat_ngram(x, seq, 1);  // every token already present
  EXPECT_EQ(kept(x), (std::vector<bool>{true, false, false, false, false, true, true, true}));
  x.assign(8, 0.0f);
  logits::no_repeat_ngram(x, std::vector<int64_t>{1, 2}, 4);  // shorter than n - 1: nothing
  EXPECT_EQ(kept(x), std::vector<bool>(8, true));
}

TEST(GenerateLogits, TypicalKeepsTokensNearTheEntropy) {
  // p = {0.5, 0.3, 0.15, 0.05}: entropy H = 1.1422; |-log p - H| = {0.449, 0.062, 0.755, 1.853},
  // so the most typical order is 1, 0, 2, 3 with cumulative probability 0.3, 0.8, 0.95, 1.
  const std::vector<double> p{0.5, 0.3, 0.15, 0.05};
  auto x = log_probs(p);
  logits::typical_p(x, 0.5);  // one token below 0.5 -> keep up to the second
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, false, false}));
  x = log_probs(p);
  logits::typical_p(x, 0.2);
  EXPECT_EQ(kept(x), (std::vector<bool>{false, true, false, false}));
  x = log_probs(p);
  logits::typical_p(x, 0.9);
  EXPECT_EQ(kept(x), (std::vector<bool>{true, true, true, false}));
  EXPECT_THROW(logits::typical_p(x, 1.0), ConfigError);
}

TEST(Logits, PresenceFrequencyPenaltyCountsGeneratedTokens) {
  std::vector<float> x{1, 2, 3, 4};
  const std::vector<int64_t> generated{1, 3, 1};
  nibble::logits::presence_frequency_penalty(x, generated, 0.5, 0.25);
  EXPECT_FLOAT_EQ(x[0], 1.0f);                  // never generated
  EXPECT_FLOAT_EQ(x[1], 2 - 0.5f - 2 * 0.25f);  // twice: presence once, frequency twice
  EXPECT_FLOAT_EQ(x[2], 3.0f);
  EXPECT_FLOAT_EQ(x[3], 4 - 0.5f - 0.25f);
}
