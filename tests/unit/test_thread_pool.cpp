// The CPU thread pool: parallel_for covers [0, n) exactly once in chunks of at least `grain`
// (but the last), rethrows a chunk's exception, runs nested calls serially without deadlock,
// and keeps working across resizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "nibble/thread_pool.h"

using namespace nibble;

namespace {

// Restores the pool size a test changed.
struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

void expect_exact_cover(int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(size_t(std::max<int64_t>(n, 0)));
  std::atomic<int64_t> calls{0};
  std::atomic<bool> bad_range{false};
  parallel_for(n, grain, [&](int64_t b, int64_t e) {
    ++calls;
    if (b < 0 || e > n || b >= e) bad_range = true;
    for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
  });
  EXPECT_FALSE(bad_range) << "n=" << n << " grain=" << grain;
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << "n=" << n << " grain=" << grain << " i=" << i;
  if (n <= 0) {
    EXPECT_EQ(calls.load(), 0);
  } else {  // never more chunks than n / grain rounded up
    int64_t g = std::max<int64_t>(grain, 1);
    EXPECT_LE(calls.load(), (n + g - 1) / g);
  }
}

}  // namespace

TEST(ThreadPool, CoversEachIndexExactlyOnce) {
  ThreadsGuard guard;
  for (int threads : {1, 2, 3, 8}) {
    set_num_threads(threads);
    EXPECT_EQ(num_threads(), threads);
    for (int64_t n : {-5, 0, 1, 2, 3, 7, 8, 63, 64, 65, 1000, 4097, 100003})
      for (int64_t grain : {-1, 0, 1, 2, 7, 64, 1000, 1 << 20}) expect_exact_cover(n, grain);
  }
}

TEST(ThreadPool, UsesSeveralThreadsForLargeWork) {
  ThreadsGuard guard;
  set_num_threads(4);
  std::mutex mu;
  std::vector<std::thread::id> ids;
  std::atomic<int> arrived{0};
  parallel_for(4 * 64, 64, [&](int64_t, int64_t) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (std::find(ids.begin(), ids.end(), std::this_thread::get_id()) == ids.end())
        ids.push_back(std::this_thread::get_id());
    }
    // Give the other workers a moment to claim chunks before this one takes them all.
    ++arrived;
    for (int spin = 0; spin < 200 && arrived.load() < 2; ++spin) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  EXPECT_GE(ids.size(), 2u);
}

TEST(ThreadPool, ExceptionsPropagateAndThePoolSurvives) {
  ThreadsGuard guard;
  for (int threads : {1, 4}) {
    set_num_threads(threads);
    EXPECT_THROW(parallel_for(1000, 10,
                              [](int64_t b, int64_t e) {
                                if (b <= 500 && 500 < e) throw std::runtime_error("chunk failed");
                              }),
                 std::runtime_error);
    try {
      parallel_for(100, 1, [](int64_t, int64_t) { throw std::invalid_argument("every chunk"); });
      FAIL() << "no exception";
    } catch (const std::invalid_argument& e) {
      EXPECT_STREQ(e.what(), "every chunk");
    }
    expect_exact_cover(10000, 16);  // still usable afterwards
  }
}

TEST(ThreadPool, NestedParallelForRunsWithoutDeadlock) {
  ThreadsGuard guard;
  set_num_threads(4);
  const int64_t outer = 64, inner = 257;
  std::vector<std::atomic<int>> hits(size_t(outer * inner));
  parallel_for(outer, 1, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      parallel_for(inner, 8, [&](int64_t ib, int64_t ie) {
        for (int64_t i = ib; i < ie; ++i) hits[size_t(o * inner + i)].fetch_add(1);
      });
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(ThreadPool, ConcurrentCallersFromOutsideThePool) {
  ThreadsGuard guard;
  set_num_threads(3);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 20; ++rep)
        parallel_for(1000, 10, [&](int64_t b, int64_t e) { total += e - b; });
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 4 * 20 * 1000);
}

TEST(ThreadPool, SetNumThreads) {
  ThreadsGuard guard;
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  std::thread::id caller = std::this_thread::get_id();
  bool all_on_caller = true;
  parallel_for(1000, 1, [&](int64_t, int64_t) { all_on_caller &= std::this_thread::get_id() == caller; });
  EXPECT_TRUE(all_on_caller);  // one thread: the caller does everything
  set_num_threads(5);
  EXPECT_EQ(num_threads(), 5);
  set_num_threads(0);  // all cores (or $NIBBLE_NUM_THREADS)
  EXPECT_GE(num_threads(), 1);
  set_num_threads(-3);
  EXPECT_GE(num_threads(), 1);
  expect_exact_cover(5000, 3);
}
