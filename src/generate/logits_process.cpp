// Logits processors and warpers on one row of logits, with the semantics of transformers'
// generation/logits_process.py (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
// TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper), plus argmax and a categorical sampler.
// Probabilities are computed in double: torch's float32 rounding is not reproduced, only the
// rule each warper applies.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "nibble/error.h"
#include "nibble/generate.h"

namespace nibble::logits {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// softmax(x) in double; -inf entries get probability 0.
std::vector<double> softmax(std::span<const float> x) {
  float mx = *std::max_element(x.begin(), x.end());
  NIBBLE_CHECK(mx != kNegInf, "every logit is masked");
  std::vector<double> p(x.size());
  double sum = 0;
  for (size_t i = 0; i < x.size(); ++i) sum += p[i] = std::exp(double(x[i]) - double(mx));
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

void repetition_penalty(std::span<float> x, std::span<const int64_t> seen, double penalty) {
  if (penalty <= 0) throw ConfigError(detail::str("repetition_penalty must be > 0, got ", penalty));
  // transformers gathers every seen id's score from the unpenalized row, then scatters the
  // penalized values back: a token seen twice is penalized once.
  std::vector<int64_t> ids(seen.begin(), seen.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int64_t id : ids) {
    NIBBLE_CHECK(id >= 0 && size_t(id) < x.size(), "token id ", id, " outside the vocabulary of ", x.size());
    float& s = x[size_t(id)];
    s = s < 0 ? float(double(s) * penalty) : float(double(s) / penalty);
  }
}

void presence_frequency_penalty(std::span<float> x, std::span<const int64_t> generated, double presence,
                                double frequency) {
  std::vector<int64_t> ids(generated.begin(), generated.end());
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j < ids.size() && ids[j] == ids[i]) ++j;
    const int64_t id = ids[i];
    NIBBLE_CHECK(id >= 0 && size_t(id) < x.size(), "token id ", id, " outside the vocabulary of ", x.size());
    x[size_t(id)] = float(double(x[size_t(id)]) - presence - frequency * double(j - i));
    i = j;
  }
}

void suppress(std::span<float> x, std::span<const int64_t> ids) {
  for (int64_t id : ids)
    if (id >= 0 && size_t(id) < x.size()) x[size_t(id)] = kNegInf;
}

void no_repeat_ngram(std::span<float> x, std::span<const int64_t> seq, int64_t n) {
  if (n <= 0) throw ConfigError(detail::str("no_repeat_ngram_size must be > 0, got ", n));
  const size_t N = size_t(n), len = seq.size();
  if (len + 1 < N) return;
  // Every earlier n-gram whose first n-1 tokens equal the sequence's last n-1 bans its last token.
  const size_t tail = len - (N - 1);
  for (size_t start = 0; start + N <= len; ++start) {
    if (std::equal(seq.begin() + int64_t(start), seq.begin() + int64_t(start + N - 1),
                   seq.begin() + int64_t(tail))) {
      const int64_t banned = seq[start + N - 1];
      if (banned >= 0 && size_t(banned) < x.size()) x[size_t(banned)] = kNegInf;
    }
  }
}

void temperature(std::span<float> x, double t) {
  if (!(t > 0)) throw ConfigError(detail::str("temperature must be strictly positive, got ", t));
  for (float& v : x) v = float(double(v) / t);
}

void top_k(std::span<float> x, int64_t k, int64_t min_tokens_to_keep) {
  if (k <= 0) throw ConfigError(detail::str("top_k must be a strictly positive integer, got ", k));
  k = std::min<int64_t>(std::max(k, min_tokens_to_keep), int64_t(x.size()));
  std::vector<float> sorted(x.begin(), x.end());
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
  const float kth = sorted[size_t(k - 1)];
  for (float& v : x)
    if (v < kth) v = kNegInf;
}

void top_p(std::span<float> x, double p, int64_t min_tokens_to_keep) {
  if (!(p >= 0 && p <= 1)) throw ConfigError(detail::str("top_p must be a float in [0, 1], got ", p));
  std::vector<double> prob = softmax(x);
  // Ascending order; among equal logits the lower id comes first, so it is removed first.
  std::vector<size_t> order(x.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  const size_t keep_tail =
      size_t(std::min<int64_t>(std::max<int64_t>(min_tokens_to_keep, 0), int64_t(x.size())));
  double cum = 0;
  for (size_t r = 0; r < order.size(); ++r) {
    cum += prob[order[r]];
    if (r >= order.size() - keep_tail) break;  // the min_tokens_to_keep largest always stay
    if (cum <= 1 - p) x[order[r]] = kNegInf;
  }
}

void min_p(std::span<float> x, double p, int64_t min_tokens_to_keep) {
  if (!(p >= 0 && p <= 1)) throw ConfigError(detail::str("min_p must be a float in [0, 1], got ", p));
  std::vector<double> prob = softmax(x);
  const double threshold = p * *std::max_element(prob.begin(), prob.end());
  // Descending order; the first min_tokens_to_keep stay whatever their probability.
  std::vector<size_t> order(x.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] > x[b]; });
  for (size_t r = size_t(std::max<int64_t>(min_tokens_to_keep, 0)); r < order.size(); ++r)
    if (prob[order[r]] < threshold) x[order[r]] = kNegInf;
}

void typical_p(std::span<float> x, double mass, int64_t min_tokens_to_keep) {
  if (!(mass > 0 && mass < 1))
    throw ConfigError(detail::str("typical_p must be a float in (0, 1), got ", mass));
  std::vector<double> prob = softmax(x);
  double entropy = 0;
  for (double p : prob)
    if (p > 0) entropy -= p * std::log(p);
  // |-log p - H|: how far each token's surprise is from the expected surprise
  std::vector<double> shifted(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    shifted[i] =
        prob[i] > 0 ? std::fabs(-std::log(prob[i]) - entropy) : std::numeric_limits<double>::infinity();
  std::vector<size_t> order(x.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return shifted[a] < shifted[b]; });
  // last_ind = how many of the most typical tokens have cumulative probability < mass
  size_t last = 0;
  double cum = 0;
  for (size_t r = 0; r < order.size(); ++r) {
    cum += prob[order[r]];
    if (cum < mass) ++last;
  }
  last = std::min(last, order.size() - 1);
  const double cut = shifted[order[last]];
  for (size_t r = size_t(std::max<int64_t>(min_tokens_to_keep, 0)); r < order.size(); ++r)
    if (shifted[order[r]] > cut) x[order[r]] = kNegInf;
}

int64_t argmax(std::span<const float> x) {
  NIBBLE_CHECK(!x.empty());
  return std::max_element(x.begin(), x.end()) - x.begin();
}

int64_t sample(std::span<const float> x, std::mt19937_64& rng) {
  std::vector<double> prob = softmax(x);
  // u in [0, 1) with 53 random bits; the first token whose cumulative probability exceeds u.
  const double u = double(rng() >> 11) * 0x1.0p-53;
  double cum = 0;
  int64_t last = -1;
  for (size_t i = 0; i < prob.size(); ++i) {
    if (prob[i] <= 0) continue;
    cum += prob[i];
    last = int64_t(i);
    if (u < cum) return last;
  }
  return last;  // rounding left cum a hair below 1: the last token with probability
}

}  // namespace nibble::logits
