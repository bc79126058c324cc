// Text generation on token ids over a CausalLM, with transformers' meaning: greedy search or
// sampling (temperature, top-k, top-p, min-p), repetition penalty, min/max new tokens, stop on
// eos ids and stop strings, a per-token streaming callback, and a batch of prompts of different
// lengths (each sequence keeps its own KV cache and finishes on its own). Settings a caller
// leaves unset come from the model's generation_config.json, as model.generate() does.
//
//   GenerateOptions o{.max_new_tokens = 40, .do_sample = true, .top_p = 0.9, .seed = 7};
//   Generation g = generate(model, prompt_ids, o);   // g.ids = prompt + new tokens
//
// Logits processors run in transformers' order (_get_logits_processor): repetition penalty ->
// no_repeat_ngram -> min_length -> min_new_tokens, then when sampling temperature -> top-k ->
// top-p -> min-p -> typical-p. Beam search (num_beams > 1) is not supported.
// Sampling draws from nibble's own RNG (std::mt19937_64): the same seed gives the same tokens,
// not torch's.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace nibble {

class CausalLM;
struct GenerationConfig;

struct GenerateOptions {
  // Decoding settings; an unset one takes the model's GenerationConfig value.
  std::optional<int64_t> max_new_tokens, min_new_tokens;
  std::optional<bool> do_sample;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k;
  std::optional<std::vector<int64_t>> eos_token_id;
  // OpenAI's penalties (not transformers settings; 0 = off, each in [-2, 2]): a token already
  // generated loses presence_penalty once plus frequency_penalty per occurrence.
  double presence_penalty = 0, frequency_penalty = 0;
  // Sequence i of a batch samples from its own stream seeded with (seed, i), so a prompt alone
  // and the same prompt first in a batch give the same tokens.
  uint64_t seed = 0;
  // Generation stops after the token that completes one of these in the decoded text (the new
  // tokens, after a few prompt tokens so a stop string may straddle the prompt's end); the stop
  // string stays in the output (transformers' StopStringCriteria). decode is required when
  // stop_strings is not empty.
  std::vector<std::string> stop_strings;
  std::function<std::string(const std::vector<int64_t>&)> decode;
  // Called for every new token, in order; returning false finishes that sequence (the token
  // stays in its output).
  std::function<bool(size_t sequence, int64_t token)> on_token;
};

enum class FinishReason { Length, Eos, StopString, Callback };
const char* finish_reason_name(FinishReason r);  // "length", "eos", "stop_string", "callback"

struct Generation {
  std::vector<int64_t> ids;  // the prompt followed by the new tokens (eos included, as transformers)
  size_t prompt_length = 0;
  FinishReason finish_reason = FinishReason::Length;
  std::vector<int64_t> new_ids() const { return {ids.begin() + int64_t(prompt_length), ids.end()}; }
};

// The settings one sequence decodes with, after defaults and validation.
struct DecodingParams {
  bool do_sample = false;
  double temperature = 1.0, top_p = 1.0, typical_p = 1.0, repetition_penalty = 1.0;
  int64_t top_k = 0, no_repeat_ngram_size = 0;
  std::optional<double> min_p;
  int64_t max_new_tokens = 20, min_new_tokens = 0, min_length = 0;  // min_length counts the prompt
  std::vector<int64_t> eos_token_id;
  double presence_penalty = 0, frequency_penalty = 0;
};
// Lengths as transformers' _prepare_generated_length: max_new_tokens wins; else max_length
// (counting the prompt); else 20 new tokens capped at max_position_embeddings in total.
// Throws ConfigError for values transformers rejects (temperature <= 0 when sampling, top_p or
// min_p outside [0, 1], top_k < 0, repetition_penalty <= 0, max_new_tokens <= 0, ...).
DecodingParams resolve_decoding(const GenerationConfig& g, const GenerateOptions& o, int64_t prompt_length,
                                int64_t max_position_embeddings);

// One sequence's decoding, a token at a time, for callers that run the model themselves (the
// generate() loop below, a server's continuous batching): step() takes the logits of the next
// position, runs the processors in transformers' order, picks the token (greedy or from the
// sequence's own sampling stream, seeded with (o.seed, index)), appends it and checks the
// stopping criteria (max_new_tokens, eos, o.stop_strings).
class SequenceDecoder {
 public:
  SequenceDecoder(const DecodingParams& d, std::vector<int64_t> prompt, const GenerateOptions& o,
                  size_t index = 0);
  int64_t step(std::span<float> logits);  // logits [vocab], modified in place
  // Whether step() would take the first maximum of the logits as they are (greedy, and no
  // processor changes a logit at this point: no penalty, no n-gram ban, min_length and
  // min_new_tokens reached), so the caller may find it where the logits are and pass it to
  // accept() instead.
  bool argmax_only() const;
  // Appends `token` (the argmax, when argmax_only()) and checks the stopping criteria as step()
  // does after its pick; returns the token.
  int64_t accept(int64_t token);
  void finish(FinishReason r);  // ends the sequence for a caller's reason
  bool done() const { return done_; }
  FinishReason finish_reason() const { return reason_; }
  const std::vector<int64_t>& ids() const { return ids_; }  // prompt + new tokens
  size_t prompt_length() const { return prompt_length_; }
  int64_t new_tokens() const { return int64_t(ids_.size() - prompt_length_); }
  const DecodingParams& params() const { return d_; }

 private:
  bool hits_stop_string() const;
  DecodingParams d_;
  std::vector<std::string> stop_strings_;
  std::function<std::string(const std::vector<int64_t>&)> decode_;
  std::vector<int64_t> ids_;
  size_t prompt_length_ = 0;
  std::mt19937_64 rng_;
  bool done_ = false;
  FinishReason reason_ = FinishReason::Length;
};

Generation generate(const CausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& o = {});
std::vector<Generation> generate(const CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                 const GenerateOptions& o = {});

// The processors, each on one row of logits [vocab], in place; masked entries become -inf.
namespace logits {
// Tokens in `seen` (prompt included): positive logits divided by penalty, negative multiplied.
void repetition_penalty(std::span<float> x, std::span<const int64_t> seen, double penalty);
// OpenAI's: x[t] -= presence * (count(t) > 0) + frequency * count(t), counts over `generated`.
void presence_frequency_penalty(std::span<float> x, std::span<const int64_t> generated, double presence,
                                double frequency);
void suppress(std::span<float> x, std::span<const int64_t> ids);  // -inf (min_length, min_new_tokens)
// Bans every token that would repeat an n-gram already in seq (NoRepeatNGramLogitsProcessor).
void no_repeat_ngram(std::span<float> x, std::span<const int64_t> seq, int64_t n);
void temperature(std::span<float> x, double t);
// Keeps every logit >= the k-th largest (ties at the k-th value all kept).
void top_k(std::span<float> x, int64_t k, int64_t min_tokens_to_keep = 1);
// Sorts ascending (stable) and removes the tokens whose cumulative probability is <= 1 - p:
// keeps the smallest set of largest tokens whose probability reaches p.
void top_p(std::span<float> x, double p, int64_t min_tokens_to_keep = 1);
// Removes tokens whose probability is below min_p * the largest probability.
void min_p(std::span<float> x, double p, int64_t min_tokens_to_keep = 1);
// Keeps the tokens whose surprise -log p is closest to the entropy until their probability
// reaches mass (TypicalLogitsWarper).
void typical_p(std::span<float> x, double mass, int64_t min_tokens_to_keep = 1);
int64_t argmax(std::span<const float> x);  // the first maximum, as torch.argmax
// Draws a token from softmax(x) (masked entries have probability 0).
int64_t sample(std::span<const float> x, std::mt19937_64& rng);
}  // namespace logits

// Incremental detokenization for streaming: push new ids, get the text they add. Text is held
// back while the decoded tail ends in U+FFFD (an incomplete UTF-8 sequence, e.g. the first
// byte-fallback token of a multi-byte character). Decodes a short window of recent ids so
// decoders that strip a leading space from the first token (sentencepiece) stay right.
class TextStreamer {
 public:
  explicit TextStreamer(std::function<std::string(const std::vector<int64_t>&)> decode);
  std::string push(std::span<const int64_t> ids);
  std::string flush();  // whatever is held back, at the end

 private:
  std::function<std::string(const std::vector<int64_t>&)> decode_;
  std::vector<int64_t> ids_;
  size_t prefix_offset_ = 0, read_offset_ = 0;
  std::string window(size_t from, size_t to) const;
};

}  // namespace nibble
