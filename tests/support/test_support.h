// Shared helpers for the test tiers: fixture paths (NIBBLE_FIXTURES, default
// ../shared/fixtures beside the project root), temporary folders, random inputs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "nibble/tensor.h"

// At the top of a test that needs a GPU: skips it when this build has no CUDA backend or no
// device is visible (the CUDA tier must pass, skipped, on machines without one).
#define SKIP_WITHOUT_CUDA()           \
  if (!::nibble::cuda_available()) {  \
    GTEST_SKIP() << "no CUDA device"; \
  }

namespace nibble::test {

// $NIBBLE_FIXTURES, or <project>/../shared/fixtures.
std::filesystem::path fixtures_root();
// <project>/../shared (models, tools).
std::filesystem::path shared_root();

// The fixture folders the golden tests expect, as the fixtures README lists them: a loop over
// fixtures must not pass by checking fewer (a missing or renamed folder fails the test).
const std::vector<std::string>& fixture_models();            // models/<arch>
const std::vector<std::string>& fixture_tokenizers();        // tokenizers/<name>
const std::vector<std::string>& fixture_tokenizers_extra();  // tokenizers-extra/<name>
// The folders under fixtures_root()/sub, sorted; a test failure (not a skip) unless their
// names are exactly `expected`.
std::vector<std::filesystem::path> fixture_dirs(const std::string& sub,
                                                const std::vector<std::string>& expected);
// The fixture_models() folders, sorted; a test failure for each that lacks `must_have`.
std::vector<std::filesystem::path> fixture_model_dirs(const std::string& must_have);
// Whether p exists; a test failure naming p when it does not (for `if (!...) continue;`).
bool fixture_exists(const std::filesystem::path& p);
// Whether $CI is set (CI has ../shared: a missing fixture there is a failure, not a skip).
bool in_ci();

// A fresh empty folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

// A seed that differs per run (printed on failure through the test's SCOPED_TRACE), unless
// NIBBLE_TEST_SEED is set.
uint64_t fresh_seed();

// Host tensor of `dtype` (f32/f16/bf16) holding normal(0, scale) values.
Tensor random_normal(const Shape& shape, DType dtype, std::mt19937_64& rng, float scale = 1.0f);

std::vector<uint8_t> read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::vector<uint8_t>& bytes);

// The first n values of row r of an int64 tensor [rows, cols] (fixture input_ids, greedy ids).
std::vector<int64_t> row(const Tensor& t, int64_t r, int64_t n);

// A shell command's exit code (-1 when it did not exit normally), stdout and stderr.
struct CommandResult {
  int rc = -1;
  std::string out, err;
};
// Runs `cmd` through the shell with `input` on stdin, capturing stdout and stderr.
CommandResult run_command(const std::string& cmd, const std::string& input = "");
// s in single quotes for the shell ('\'' for each quote inside).
std::string shell_quote(const std::string& s);

}  // namespace nibble::test

// Skips the test when the fixture path p is missing, except under CI, where that fails it.
#define NIBBLE_SKIP_WITHOUT_FIXTURE(p)                                               \
  do {                                                                               \
    if (!std::filesystem::exists(p)) {                                               \
      if (::nibble::test::in_ci()) FAIL() << "fixture missing (CI is set): " << (p); \
      GTEST_SKIP() << "no " << (p);                                                  \
    }                                                                                \
  } while (0)
