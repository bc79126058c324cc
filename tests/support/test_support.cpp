#include "test_support.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <sys/wait.h>

#include <gtest/gtest.h>

#include "nibble/error.h"

namespace fs = std::filesystem;

namespace nibble::test {

fs::path shared_root() {
  return fs::path(NIBBLE_SOURCE_DIR) / ".." / "shared";
}

fs::path fixtures_root() {
  if (const char* e = std::getenv("NIBBLE_FIXTURES"); e && *e) return fs::path(e);
  return shared_root() / "fixtures";
}

const std::vector<std::string>& fixture_models() {
  static const std::vector<std::string> v = {"bloom", "gpt2", "gpt_neox", "llama", "opt", "phi3", "qwen2"};
  return v;
}

const std::vector<std::string>& fixture_tokenizers() {
  static const std::vector<std::string> v = {"bert_base_uncased",
                                             "gemma_cropped_tiny",
                                             "gpt2",
                                             "llama2",
                                             "llama3_regex_tiny",
                                             "meta-llama-3-8b-instruct",
                                             "minimind",
                                             "mistral",
                                             "phi-4-mini",
                                             "phi3",
                                             "qwen2.5",
                                             "qwen2_regex_tiny",
                                             "smollm",
                                             "t5_small",
                                             "tinyllama"};
  return v;
}

const std::vector<std::string>& fixture_tokenizers_extra() {
  static const std::vector<std::string> v = {"chatglm",
                                             "clip",
                                             "cohere",
                                             "deepseek",
                                             "falcon",
                                             "gpt-oss",
                                             "marian_nmt",
                                             "models_gemma-4",
                                             "models_phi-4",
                                             "nvidia-mistral",
                                             "phi-4-mini-reasoning",
                                             "phi2",
                                             "qwen3",
                                             "roberta_base",
                                             "tokenizer_wiki",
                                             "v5_smollm3",
                                             "whisper_large_v3"};
  return v;
}

std::vector<fs::path> fixture_dirs(const std::string& sub, const std::vector<std::string>& expected) {
  std::vector<fs::path> out;
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fixtures_root() / sub, ec))
    if (e.is_directory()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  for (const auto& p : out) names.push_back(p.filename().string());
  std::vector<std::string> want = expected;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(names, want)
      << "the fixture folders under " << (fixtures_root() / sub)
      << " are not the ones the tests expect (missing, renamed or new: update test_support.cpp)";
  return out;
}

std::vector<fs::path> fixture_model_dirs(const std::string& must_have) {
  std::vector<fs::path> out;
  for (const auto& p : fixture_dirs("models", fixture_models()))
    if (fixture_exists(p / must_have)) out.push_back(p);
  return out;
}

bool fixture_exists(const fs::path& p) {
  if (fs::exists(p)) return true;
  ADD_FAILURE() << "fixture missing: " << p;
  return false;
}

bool in_ci() {
  const char* e = std::getenv("CI");
  return e && *e;
}

TempDir::TempDir() {
  static int counter = 0;
  auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
  path_ =
      fs::temp_directory_path() / ("nibble-test-" + std::to_string(stamp) + "-" + std::to_string(++counter));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

uint64_t fresh_seed() {
  if (const char* e = std::getenv("NIBBLE_TEST_SEED"); e && *e) return std::strtoull(e, nullptr, 10);
  return std::random_device{}() ^ uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
}

Tensor random_normal(const Shape& shape, DType dtype, std::mt19937_64& rng, float scale) {
  Tensor t = Tensor::empty(shape, dtype);
  std::normal_distribution<float> nd(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) store_from_f32(t.data_ptr(), dtype, i, nd(rng));
  return t;
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw IoError("cannot read " + p.string());
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!f) throw IoError("cannot write " + p.string());
}

std::vector<int64_t> row(const Tensor& t, int64_t r, int64_t n) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(t.data<int64_t>()[r * t.size(1) + i]);
  return v;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

CommandResult run_command(const std::string& cmd, const std::string& input) {
  TempDir tmp;
  const auto in = tmp / "stdin", err = tmp / "stderr";
  std::ofstream(in) << input;
  CommandResult r;
  FILE* p = popen((cmd + " <" + shell_quote(in.string()) + " 2>" + shell_quote(err.string())).c_str(), "r");
  if (!p) return r;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
  const int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  return r;
}

}  // namespace nibble::test
