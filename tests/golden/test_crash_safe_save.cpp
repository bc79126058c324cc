// Crash-safe writes: save_pretrained, peft adapter saves and training checkpoints, each run in
// a forked child that is killed with SIGKILL at a random moment of the save (50 moments per
// writer). Every time, the target folder must hold exactly the complete old content or the
// complete new one (every file name and every byte), never a mix and never a partial file under
// a final name. The two contents differ in their file sets (one weight file vs shards + index),
// and a foreign file in the folder (tokenizer.json) must survive every save. The model is
// TinyStories (656k parameters), so one save takes milliseconds.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "nibble/model.h"
#include "nibble/train.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

// The order of the durability calls, seen from inside the process: this binary's own fsync,
// rename and renameat2 (the executable's definitions win over libc's when libnibble.a is linked
// in) log each call while tracing is on, then make the system call itself.
namespace trace {
std::atomic<bool> on{false};
std::mutex mu;
std::vector<std::pair<std::string, std::string>> log;  // (call, path or "from -> to")

std::string fd_path(int fd) {
  char buf[4096];
  const ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, size_t(n)) : "?";
}
void record(const char* call, std::string what) {
  if (!on) return;
  std::lock_guard lock(mu);
  log.emplace_back(call, std::move(what));
}
}  // namespace trace

extern "C" int fsync(int fd) {
  trace::record("fsync", trace::fd_path(fd));
  return int(::syscall(SYS_fsync, fd));
}
extern "C" int rename(const char* from, const char* to) noexcept {
  trace::record("rename", std::string(from) + " -> " + to);
  return int(::syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 0));
}
extern "C" int renameat2(int from_fd, const char* from, int to_fd, const char* to, unsigned flags) noexcept {
  trace::record(flags & RENAME_EXCHANGE ? "exchange" : "rename", std::string(from) + " -> " + to);
  return int(::syscall(SYS_renameat2, from_fd, from, to_fd, to, flags));
}

namespace {

using Clock = std::chrono::steady_clock;
// Every entry under a folder: relative path -> bytes ("<dir>" for a folder). Empty map: the
// folder does not exist.
using Snapshot = std::map<std::string, std::string>;

Snapshot snapshot(const fs::path& dir) {
  Snapshot s;
  if (!fs::exists(dir)) return s;
  s["."] = "<dir>";
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string rel = e.path().lexically_relative(dir).string();
    if (e.is_directory()) {
      s[rel] = "<dir>";
    } else {
      std::ifstream f(e.path(), std::ios::binary);
      s[rel] = std::string(std::istreambuf_iterator<char>(f), {});
    }
  }
  return s;
}

std::string names(const Snapshot& s) {
  std::string out;
  for (const auto& [k, v] : s) out += k + "(" + std::to_string(v.size()) + ") ";
  return out;
}

// Runs save() in a forked child. kill_after < 0: waits for it to finish. Returns true when the
// child completed the save (exit 0) before any kill, and its run time in `took`.
bool run_writer(const std::function<void()>& save, std::chrono::microseconds kill_after,
                double* took = nullptr) {
  const auto t0 = Clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    try {
      save();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "writer: %s\n", e.what());
      ::_exit(3);
    }
    ::_exit(0);
  }
  EXPECT_GT(pid, 0);
  if (kill_after.count() >= 0) {
    std::this_thread::sleep_for(kill_after);
    ::kill(pid, SIGKILL);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (took) *took = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  if (kill_after.count() < 0) {
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "writer failed";
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// The crash test of one writer: A and B are two saves into `target` with different contents.
// foreign: whether a file of someone else in the folder (tokenizer.json) must survive the saves.
void kill_writers(const fs::path& target, const std::function<void()>& save_a,
                  const std::function<void()>& save_b, bool foreign = true, int rounds = 50) {
  fs::create_directories(target);
  std::ofstream(target / "tokenizer.json") << "{\"foreign\": true}";
  double ta = 0, tb = 0;
  run_writer(save_a, std::chrono::microseconds(-1), &ta);
  const Snapshot a = snapshot(target);
  run_writer(save_b, std::chrono::microseconds(-1), &tb);
  const Snapshot b = snapshot(target);
  ASSERT_NE(a, b);
  ASSERT_EQ(a.count("tokenizer.json") + b.count("tokenizer.json"), foreign ? 2u : 0u)
      << names(a) << "| " << names(b);
  // The first saves run cold (new files, a first fork); the kill window is the fastest of three
  // warm saves each, so that the kills land inside the saves however noisy the machine.
  for (int k = 0; k < 3; ++k) {
    double t = 0;
    run_writer(save_a, std::chrono::microseconds(-1), &t);
    ta = k == 0 ? t : std::min(ta, t);
    run_writer(save_b, std::chrono::microseconds(-1), &t);
    tb = k == 0 ? t : std::min(tb, t);
  }
  ASSERT_EQ(snapshot(target), b);
  const uint64_t seed = test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  int interrupted = 0, kept_old = 0, got_new = 0;
  for (int round = 0; round < rounds; ++round) {
    const Snapshot before = snapshot(target);
    const bool was_a = before == a;
    ASSERT_TRUE(was_a || before == b) << names(before);
    // Uniform over the first 60% of a writer's measured time: that time includes the fork and the
    // child's exit, so the save itself ends inside the window and some kills still come after it.
    const double span = 0.6 * (was_a ? tb : ta);
    const auto delay =
        std::chrono::microseconds(int64_t(std::uniform_real_distribution<double>(0, span)(rng)));
    const bool finished = run_writer(was_a ? save_b : save_a, delay);
    const Snapshot after = snapshot(target);
    const bool is_old = after == before, is_new = after == (was_a ? b : a);
    EXPECT_TRUE(is_old || is_new) << "round " << round << ", killed after " << delay.count()
                                  << " us: a mix: " << names(after);
    if (finished) {
      EXPECT_TRUE(is_new) << "round " << round << ": the save completed but the folder is old";
    }
    interrupted += !finished;
    kept_old += is_old;
    got_new += is_new && !finished;
  }
  std::printf(
      "[ crash ] %s: %d kills, %d mid-save (%d left the old folder, %d the new one; save %.0f / %.0f us)\n",
      target.filename().c_str(), rounds, interrupted, kept_old, got_new, ta, tb);
  EXPECT_GT(interrupted, rounds / 4) << "the kills did not land inside the saves";
  // A completed save clears the staging folders killed writers left beside the target.
  run_writer(save_a, std::chrono::microseconds(-1));
  EXPECT_EQ(snapshot(target), a);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(target.parent_path()))
    left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{target.filename().string()});
}

fs::path tinystories_dir() {
  return test::shared_root() / "models" / "tinystories-656k";
}

}  // namespace

TEST(CrashSafeSave, SavePretrainedIsOldOrNew) {
  CausalLM model = AutoModelForCausalLM::from_pretrained(tinystories_dir());
  test::TempDir tmp;
  const fs::path target = tmp / "model";
  // A: one model.safetensors; B: shards of at most 1 MB + model.safetensors.index.json.
  kill_writers(
      target, [&] { model.save_pretrained(target); }, [&] { model.save_pretrained(target, 1'000'000); });
}

TEST(CrashSafeSave, AdapterSaveIsOldOrNew) {
  LoraConfig cfg;
  cfg.r = 4;
  cfg.target_modules = {"q_proj", "v_proj"};
  PeftModel a = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(tinystories_dir()), cfg, 1);
  cfg.r = 8;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  PeftModel b = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(tinystories_dir()), cfg, 2);
  test::TempDir tmp;
  const fs::path target = tmp / "adapter";
  kill_writers(
      target, [&] { a.save_pretrained(target); }, [&] { b.save_pretrained(target); });
}

TEST(CrashSafeSave, TrainingCheckpointIsOldOrNew) {
  LoraConfig cfg;
  cfg.r = 4;
  cfg.target_modules = {"q_proj", "v_proj"};
  PeftModel a = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(tinystories_dir()), cfg, 3);
  cfg.r = 8;
  cfg.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  PeftModel b = PeftModel::get_peft_model(AutoModelForCausalLM::from_pretrained(tinystories_dir()), cfg, 4);
  LoraTrainer ta(a, TrainingArguments{}, 10), tb(b, TrainingArguments{}, 10);
  test::TempDir tmp;
  const fs::path target = tmp / "checkpoint-2";
  // A checkpoint folder is wholly the trainer's: nothing else in it survives a save.
  kill_writers(
      target, [&] { ta.save_checkpoint(target, a, "{\"global_step\": 1}"); },
      [&] { tb.save_checkpoint(target, b, "{\"global_step\": 2, \"log_history\": []}"); }, false);
}

// fsync before rename, as io::AtomicFile and io::AtomicDir claim: every file is fsynced under its
// temporary name before it is renamed, its folder after; the staging folder is fsynced after its
// last entry and before the exchange; the parent after the exchange.
TEST(CrashSafeSave, FsyncBeforeEveryRename) {
  CausalLM model = AutoModelForCausalLM::from_pretrained(tinystories_dir());
  test::TempDir tmp;
  const fs::path target = tmp / "model";
  model.save_pretrained(target);  // the second save replaces a folder: the exchange path
  {
    std::lock_guard lock(trace::mu);
    trace::log.clear();
  }
  trace::on = true;
  model.save_pretrained(target, 1'000'000);
  trace::on = false;
  const auto log = trace::log;
  auto index_of = [&](const std::string& call, const std::string& what, size_t from = 0) {
    for (size_t i = from; i < log.size(); ++i)
      if (log[i].first == call && log[i].second == what) return i;
    return log.size();
  };
  std::string exchanged;
  size_t exchange_at = log.size(), files = 0;
  for (size_t i = 0; i < log.size(); ++i) {
    const auto& [call, what] = log[i];
    if (call == "exchange") {
      exchanged = what;
      exchange_at = i;
    }
    if (call != "rename") continue;
    ++files;
    const std::string from = what.substr(0, what.find(" -> ")), to = what.substr(what.find(" -> ") + 4);
    EXPECT_LT(index_of("fsync", from), i) << "renamed before its fsync: " << what;
    EXPECT_LT(index_of("fsync", fs::path(to).parent_path().string(), i), log.size())
        << "no fsync of the folder after: " << what;
  }
  EXPECT_EQ(files, 6u);  // 3 shards, the index, config.json, generation_config.json
  ASSERT_LT(exchange_at, log.size()) << "no RENAME_EXCHANGE";
  const std::string staging = exchanged.substr(0, exchanged.find(" -> "));
  EXPECT_EQ(exchanged.substr(exchanged.find(" -> ") + 4), target.string());
  size_t last_rename = 0, staging_fsync = log.size();
  for (size_t i = 0; i < exchange_at; ++i) {
    if (log[i].first == "rename") last_rename = i;
    if (log[i].first == "fsync" && log[i].second == staging) staging_fsync = i;
  }
  EXPECT_GT(staging_fsync, last_rename) << "the staging folder was not fsynced after its last entry";
  EXPECT_LT(staging_fsync, exchange_at);
  EXPECT_LT(index_of("fsync", tmp.path().string(), exchange_at), log.size())
      << "parent not fsynced after the exchange";
}

// Saving into the working directory: the exchange moves the old folder's inode away, so the
// process's working directory must follow the name (not stay in the removed old content).
TEST(CrashSafeSave, SaveIntoTheWorkingDirectory) {
  CausalLM model = AutoModelForCausalLM::from_pretrained(tinystories_dir());
  test::TempDir tmp;
  const fs::path target = tmp / "model";
  model.save_pretrained(target);
  const fs::path before = fs::current_path();
  fs::current_path(target);
  model.save_pretrained(".", 1'000'000);
  std::error_code ec;
  const fs::path now = fs::current_path(ec);
  fs::current_path(before);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(now, target);
  EXPECT_TRUE(fs::exists(target / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(target / "model.safetensors"));
}
