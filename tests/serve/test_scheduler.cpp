// The continuous-batching scheduler on TinyStories, driven from many threads at once (the
// `serve` label runs under ThreadSanitizer in the tsan preset): every greedy job (plain, or with a
// repetition penalty or min_new_tokens) gives the same tokens as generate() of its prompt alone,
// cancelled jobs free their slot, a full queue refuses.
#include <gtest/gtest.h>

#include <thread>

#include "nibble/generation_config.h"
#include "nibble/model.h"
#include "serve/metrics.h"
#include "serve/scheduler.h"
#include "test_support.h"

using namespace nibble;
using namespace std::chrono_literals;

namespace {

const CausalLM& model() {
  static CausalLM m =
      AutoModelForCausalLM::from_pretrained(test::shared_root() / "models" / "tinystories-656k");
  return m;
}

std::vector<int64_t> run_job(const std::shared_ptr<serve::Job>& job) {
  std::vector<int64_t> out;
  for (;;) {
    serve::Job::Update u = job->wait(1000ms);
    out.insert(out.end(), u.tokens.begin(), u.tokens.end());
    if (u.done) {
      EXPECT_TRUE(u.error.empty()) << u.error;
      EXPECT_FALSE(u.cancelled);
      return out;
    }
  }
}

}  // namespace

TEST(Scheduler, ConcurrentGreedyJobsMatchGenerateAlone) {
  const CausalLM& m = model();
  serve::Metrics metrics;
  serve::Scheduler sched(m, {.parallel = 3, .max_queue = 64, .prefill_chunk = 3}, metrics);
  // Prompts of different lengths (bos + a few ids), so sequences sit at different positions.
  std::vector<std::vector<int64_t>> prompts;
  for (int i = 0; i < 12; ++i) {
    std::vector<int64_t> p{1};
    for (int k = 0; k <= i % 5; ++k) p.push_back(100 + 37 * i + 11 * k);
    prompts.push_back(p);
  }
  // Most jobs plain greedy (the argmax found where the model ran); every fourth with a
  // repetition penalty and every fifth with min_new_tokens (their logits come to the host), so
  // decode steps run both forms, alone and mixed in one batch.
  std::vector<GenerateOptions> opts(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    opts[i].max_new_tokens = 12 + int64_t(prompts.size() % 3);
    if (i % 4 == 1) opts[i].repetition_penalty = 1.3;
    if (i % 5 == 2) opts[i].min_new_tokens = 5;
  }
  std::vector<std::vector<int64_t>> got(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i)
    clients.emplace_back([&, i] {
      DecodingParams d = resolve_decoding(m.generation_config(), opts[i], int64_t(prompts[i].size()),
                                          m.config().max_position_embeddings);
      auto job = std::make_shared<serve::Job>(prompts[i], d, opts[i]);
      ASSERT_TRUE(sched.submit(job));
      got[i] = run_job(job);
    });
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    Generation alone = generate(m, prompts[i], opts[i]);
    EXPECT_EQ(got[i], alone.new_ids()) << "prompt " << i;
    EXPECT_FALSE(got[i].empty());
  }
  EXPECT_NE(metrics.prometheus().find("nibble_generated_tokens_total"), std::string::npos);
}

TEST(Scheduler, CancelFreesTheSlotAndFullQueueRefuses) {
  const CausalLM& m = model();
  serve::Metrics metrics;
  serve::Scheduler sched(m, {.parallel = 1, .max_queue = 1, .prefill_chunk = 64}, metrics);
  GenerateOptions o;
  o.max_new_tokens = 400;
  o.eos_token_id = std::vector<int64_t>{};  // runs to max_new_tokens unless cancelled
  DecodingParams d = resolve_decoding(m.generation_config(), o, 2, m.config().max_position_embeddings);
  auto long_job = std::make_shared<serve::Job>(std::vector<int64_t>{1, 200}, d, o);
  ASSERT_TRUE(sched.submit(long_job));
  while (sched.running() == 0) std::this_thread::sleep_for(1ms);
  auto queued = std::make_shared<serve::Job>(std::vector<int64_t>{1, 300}, d, o);
  ASSERT_TRUE(sched.submit(queued));
  auto refused = std::make_shared<serve::Job>(std::vector<int64_t>{1, 400}, d, o);
  EXPECT_FALSE(sched.submit(refused));  // one slot busy, the queue (1) full
  long_job->cancel();
  queued->cancel();
  serve::Job::Update u;
  while (!(u = long_job->wait(1000ms)).done) {
  }
  EXPECT_TRUE(u.cancelled);
  // Both slot and queue are free again: a short job runs to completion.
  GenerateOptions s;
  s.max_new_tokens = 5;
  auto next = std::make_shared<serve::Job>(
      std::vector<int64_t>{1, 500},
      resolve_decoding(m.generation_config(), s, 2, m.config().max_position_embeddings), s);
  while (!sched.submit(next)) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(run_job(next), generate(m, {1, 500}, s).new_ids());
}
