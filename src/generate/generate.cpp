// The generation loop: resolve the settings against the model's GenerationConfig, then step
// every unfinished sequence one token at a time (SequenceDecoder: process its last logits row in
// transformers' order, pick greedily or sample, check the stopping criteria) and, unless it
// finished or the caller's callback ended it, feed the token back through its own KV cache.
#include <algorithm>
#include <memory>

#include "models/causal_lm_impl.h"  // KVCache must be complete to own one
#include "nibble/error.h"
#include "nibble/generate.h"
#include "nibble/generation_config.h"
#include "nibble/model.h"

namespace nibble {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length:
      return "length";
    case FinishReason::Eos:
      return "eos";
    case FinishReason::StopString:
      return "stop_string";
    case FinishReason::Callback:
      return "callback";
  }
  return "?";
}

DecodingParams resolve_decoding(const GenerationConfig& g, const GenerateOptions& o, int64_t prompt_length,
                                int64_t max_position_embeddings) {
  DecodingParams d;
  d.do_sample = o.do_sample.value_or(g.do_sample);
  d.temperature = o.temperature.value_or(g.temperature);
  d.top_k = o.top_k.value_or(g.top_k);
  d.top_p = o.top_p.value_or(g.top_p);
  d.min_p = o.min_p ? o.min_p : g.min_p;
  d.repetition_penalty = o.repetition_penalty.value_or(g.repetition_penalty);
  d.eos_token_id = o.eos_token_id.value_or(g.eos_token_id);
  d.typical_p = g.typical_p;
  d.no_repeat_ngram_size = g.no_repeat_ngram_size;
  d.presence_penalty = o.presence_penalty;
  d.frequency_penalty = o.frequency_penalty;
  if (g.num_beams > 1)
    throw UnsupportedError(
        detail::str("generation: num_beams = ", g.num_beams, " (beam search) is not supported"));

  auto bad = [](const char* field, const auto& v, const char* rule) {
    throw ConfigError(detail::str("generation: ", field, " ", rule, ", got ", v));
  };
  if (d.do_sample && !(d.temperature > 0))
    bad("temperature", d.temperature, "must be strictly positive when sampling");
  if (d.top_k < 0) bad("top_k", d.top_k, "must be >= 0");
  if (!(d.top_p >= 0 && d.top_p <= 1)) bad("top_p", d.top_p, "must be in [0, 1]");
  if (d.min_p && !(*d.min_p >= 0 && *d.min_p <= 1)) bad("min_p", *d.min_p, "must be in [0, 1]");
  if (!(d.repetition_penalty > 0)) bad("repetition_penalty", d.repetition_penalty, "must be > 0");
  if (!(d.typical_p > 0 && d.typical_p <= 1)) bad("typical_p", d.typical_p, "must be in (0, 1]");
  if (!(d.presence_penalty >= -2 && d.presence_penalty <= 2))
    bad("presence_penalty", d.presence_penalty, "must be in [-2, 2]");
  if (!(d.frequency_penalty >= -2 && d.frequency_penalty <= 2))
    bad("frequency_penalty", d.frequency_penalty, "must be in [-2, 2]");
  if (d.no_repeat_ngram_size < 0) bad("no_repeat_ngram_size", d.no_repeat_ngram_size, "must be >= 0");

  if (auto n = o.max_new_tokens ? o.max_new_tokens : g.max_new_tokens) {
    if (*n <= 0) bad("max_new_tokens", *n, "must be greater than 0");
    d.max_new_tokens = *n;
  } else if (g.max_length && *g.max_length != 20) {
    // An explicit total length; transformers still runs one step when the prompt fills it.
    d.max_new_tokens = std::max<int64_t>(*g.max_length - prompt_length, 1);
  } else {
    // transformers' default max_length (20) is taken as 20 new tokens, capped at the
    // model's max_position_embeddings in total.
    d.max_new_tokens = 20;
    if (max_position_embeddings > 0)
      d.max_new_tokens =
          std::max<int64_t>(std::min(prompt_length + 20, max_position_embeddings) - prompt_length, 1);
  }
  d.min_new_tokens = o.min_new_tokens.value_or(g.min_new_tokens.value_or(0));
  if (d.min_new_tokens < 0) bad("min_new_tokens", d.min_new_tokens, "must be >= 0");
  d.min_length = g.min_length.value_or(0);
  return d;
}

SequenceDecoder::SequenceDecoder(const DecodingParams& d, std::vector<int64_t> prompt,
                                 const GenerateOptions& o, size_t index)
    : d_(d), stop_strings_(o.stop_strings), decode_(o.decode), ids_(std::move(prompt)) {
  if (!stop_strings_.empty() && !decode_)
    throw ConfigError("generation: stop_strings need a decode function (the tokenizer's)");
  prompt_length_ = ids_.size();
  std::seed_seq seq{uint32_t(o.seed), uint32_t(o.seed >> 32), uint32_t(index),
                    uint32_t(uint64_t(index) >> 32)};
  rng_.seed(seq);
}

// transformers' StopStringCriteria fires when a token completes a stop string, even with text
// after it in the same token, and it looks at the prompt too (a stop string may straddle the
// prompt's end). So: decode a few prompt tokens followed by the new ones and look for an
// occurrence that ends inside the new text. An occurrence that ended before this token would
// have stopped the sequence at that step already.
bool SequenceDecoder::hits_stop_string() const {
  const size_t ctx = std::min<size_t>(prompt_length_, 8);
  std::vector<int64_t> window(ids_.begin() + int64_t(prompt_length_ - ctx), ids_.end());
  const std::string now = decode_(window);
  window.resize(ctx);
  const size_t head = ctx ? decode_(window).size() : 0;
  for (const std::string& stop : stop_strings_) {
    if (stop.empty()) continue;
    const size_t from = head >= stop.size() ? head - stop.size() + 1 : 0;
    if (now.find(stop, from) != std::string::npos) return true;
  }
  return false;
}

int64_t SequenceDecoder::step(std::span<float> x) {
  NIBBLE_CHECK(!done_, "generation: step() on a finished sequence");
  const DecodingParams& d = d_;
  const int64_t n_new = new_tokens();
  // Processors, in _get_logits_processor's order (OpenAI's penalties first: they are not
  // transformers processors and llama.cpp applies them before the others too).
  if (d.presence_penalty != 0 || d.frequency_penalty != 0)
    logits::presence_frequency_penalty(x, std::span(ids_).subspan(prompt_length_), d.presence_penalty,
                                       d.frequency_penalty);
  if (d.repetition_penalty != 1.0) logits::repetition_penalty(x, ids_, d.repetition_penalty);
  if (d.no_repeat_ngram_size > 0) logits::no_repeat_ngram(x, ids_, d.no_repeat_ngram_size);
  if (int64_t(ids_.size()) < d.min_length) logits::suppress(x, d.eos_token_id);
  if (n_new < d.min_new_tokens) logits::suppress(x, d.eos_token_id);
  int64_t token;
  if (d.do_sample) {
    if (d.temperature != 1.0) logits::temperature(x, d.temperature);
    if (d.top_k != 0) logits::top_k(x, d.top_k);
    if (d.top_p < 1.0) logits::top_p(x, d.top_p);
    if (d.min_p) logits::min_p(x, *d.min_p);
    if (d.typical_p < 1.0) logits::typical_p(x, d.typical_p);
    token = logits::sample(x, rng_);
  } else {
    token = logits::argmax(x);
  }
  return accept(token);
}

bool SequenceDecoder::argmax_only() const {
  const DecodingParams& d = d_;
  return !d.do_sample && d.presence_penalty == 0 && d.frequency_penalty == 0 && d.repetition_penalty == 1.0 &&
         d.no_repeat_ngram_size <= 0 && int64_t(ids_.size()) >= d.min_length && new_tokens() >= d.min_new_tokens;
}

int64_t SequenceDecoder::accept(int64_t token) {
  NIBBLE_CHECK(!done_, "generation: accept() on a finished sequence");
  const DecodingParams& d = d_;
  ids_.push_back(token);

  // Stopping criteria, as transformers checks them after appending the token.
  if (new_tokens() >= d.max_new_tokens) done_ = true, reason_ = FinishReason::Length;
  if (std::find(d.eos_token_id.begin(), d.eos_token_id.end(), token) != d.eos_token_id.end())
    done_ = true, reason_ = FinishReason::Eos;
  if (!done_ && !stop_strings_.empty() && hits_stop_string())
    done_ = true, reason_ = FinishReason::StopString;
  return token;
}

void SequenceDecoder::finish(FinishReason r) {
  if (!done_) done_ = true, reason_ = r;
}

namespace {

void copy_last_row(const Tensor& logits, std::vector<float>& out) {
  const int64_t T = logits.size(0), V = logits.size(1);
  const float* row = logits.data<float>() + (T - 1) * V;
  out.assign(row, row + V);
}

}  // namespace

std::vector<Generation> generate(const CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                 const GenerateOptions& o) {
  if (!o.stop_strings.empty() && !o.decode)
    throw ConfigError("generation: stop_strings need a decode function (the tokenizer's)");
  const GenerationConfig& gc = model.generation_config();
  const int64_t max_pos = model.config().max_position_embeddings;

  std::vector<SequenceDecoder> seqs;
  std::vector<std::unique_ptr<KVCache>> caches;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw ShapeError(detail::str("generation: prompt ", i, " is empty"));
    DecodingParams d = resolve_decoding(gc, o, int64_t(prompts[i].size()), max_pos);
    // one allocation for the whole generation: prompt + the most tokens it may add
    caches.push_back(model.new_cache(int64_t(prompts[i].size()) + std::max<int64_t>(d.max_new_tokens, 1)));
    seqs.emplace_back(d, prompts[i], o, i);
  }
  // Each sequence's next position: its logits [vocab] on the host when its processors need them,
  // else only their argmax, found where the model ran (argmax_only: greedy with no processor).
  std::vector<std::vector<float>> last(seqs.size());
  std::vector<int64_t> best(seqs.size(), -1);
  auto advance = [&](size_t i, const std::vector<int64_t>& ids) {
    if (seqs[i].argmax_only()) {
      best[i] = model.forward_last_argmax(ids, caches[i].get());
    } else {
      best[i] = -1;
      copy_last_row(model.forward_last(ids, caches[i].get()), last[i]);
    }
  };
  for (size_t i = 0; i < seqs.size(); ++i) advance(i, prompts[i]);

  for (bool any = !seqs.empty(); any;) {
    any = false;
    for (size_t i = 0; i < seqs.size(); ++i) {
      SequenceDecoder& s = seqs[i];
      if (s.done()) continue;
      const int64_t token = best[i] >= 0 ? s.accept(best[i]) : s.step(last[i]);
      if (o.on_token && !o.on_token(i, token)) s.finish(FinishReason::Callback);
      if (s.done()) {
        caches[i].reset();
        continue;
      }
      any = true;
      advance(i, {token});
    }
  }

  std::vector<Generation> out;
  for (SequenceDecoder& s : seqs) out.push_back({s.ids(), s.prompt_length(), s.finish_reason()});
  return out;
}

Generation generate(const CausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& o) {
  return std::move(generate(model, std::vector<std::vector<int64_t>>{prompt}, o).front());
}

}  // namespace nibble
