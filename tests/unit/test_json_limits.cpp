// Every JSON file nibble reads from a stranger (config.json, generation_config.json,
// tokenizer.json, tokenizer_config.json, adapter_config.json, the sharded index, a
// quantization config, SFT data lines) under the two limits of io/read_file.h: nesting
// 100,000 deep and a file that claims a gigabyte each end in one clear line naming the file,
// before any deep tree or large buffer exists; ordinary nesting still loads.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>

#include "nibble/bnb_config.h"
#include "nibble/error.h"
#include "nibble/generation_config.h"
#include "nibble/lora.h"
#include "nibble/model_config.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"
#include "nibble/train.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

// {"a": [[[...]]]} nested `depth` arrays deep.
std::string nested(size_t depth) {
  return "{\"a\": " + std::string(depth, '[') + std::string(depth, ']') + "}";
}

const std::string kMinimalTokenizer =
    R"({"added_tokens": [], "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})";

struct Reader {
  const char* file;                                  // the file under test, in a folder
  std::function<void(const fs::path& dir)> prepare;  // the other files the reader needs
  std::function<void(const fs::path& dir)> read;
};

const Reader kReaders[] = {
    {"config.json", [](const fs::path&) {},
     [](const fs::path& d) { ModelConfig::from_file(d / "config.json"); }},
    {"generation_config.json", [](const fs::path&) {},
     [](const fs::path& d) { GenerationConfig::from_file(d / "generation_config.json"); }},
    {"tokenizer.json", [](const fs::path&) {}, [](const fs::path& d) { Tokenizer::from_pretrained(d); }},
    {"tokenizer_config.json",
     [](const fs::path& d) { std::ofstream(d / "tokenizer.json") << kMinimalTokenizer; },
     [](const fs::path& d) { Tokenizer::from_pretrained(d); }},
    {"adapter_config.json", [](const fs::path&) {}, [](const fs::path& d) { LoraConfig::load(d); }},
    {"model.safetensors.index.json", [](const fs::path&) {}, [](const fs::path& d) { Checkpoint::open(d); }},
    {"quant_config.json", [](const fs::path&) {},
     [](const fs::path& d) { BitsAndBytesConfig::from_config_json(d / "quant_config.json"); }},
    {"train.jsonl", [](const fs::path&) {},
     [](const fs::path& d) { load_sft_jsonl(d / "train.jsonl", nullptr, nullptr, 64); }},
};

// The one-line message of the nibble::Error that reading throws ("" when none).
std::string error_of(const Reader& r, const fs::path& dir) {
  try {
    r.read(dir);
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a nibble::Error: ") + e.what();
  }
  return "";
}

long peak_rss_kb() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

}  // namespace

TEST(JsonLimits, NestingDeeperThanTheLimitIsOneLineNamingTheFile) {
  for (const Reader& r : kReaders) {
    SCOPED_TRACE(r.file);
    test::TempDir dir;
    r.prepare(dir.path());
    std::ofstream(dir / r.file) << nested(100'000) << "\n";
    const std::string msg = error_of(r, dir.path());
    EXPECT_NE(msg.find(r.file), std::string::npos) << msg;
    EXPECT_NE(msg.find("nested deeper than 256 levels"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    // At the limit the nesting itself is accepted (whatever the reader then says of the
    // content, it is not the nesting).
    std::ofstream(dir / r.file) << nested(255) << "\n";
    EXPECT_EQ(error_of(r, dir.path()).find("nested deeper"), std::string::npos);
  }
}

// A file that claims a gigabyte (a sparse file: no disk, no time to make) is refused from its
// size, before any of it is read: the peak memory of the process does not grow by a gigabyte.
TEST(JsonLimits, AGigabyteFileIsRefusedBeforeItIsRead) {
  for (const Reader& r : kReaders) {
    if (std::string(r.file) == "train.jsonl") continue;  // training data is read a line at a time
    SCOPED_TRACE(r.file);
    test::TempDir dir;
    r.prepare(dir.path());
    {
      std::ofstream f(dir / r.file);
      f << "{\"a\": \"";  // one JSON string of a gigabyte
    }
    fs::resize_file(dir / r.file, (uintmax_t(1) << 30) + 2);
    const long before = peak_rss_kb();
    const auto t0 = std::chrono::steady_clock::now();
    const std::string msg = error_of(r, dir.path());
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
    EXPECT_LT(peak_rss_kb() - before, 256 * 1024) << "kB of peak memory grew while refusing";
    EXPECT_NE(msg.find(r.file), std::string::npos) << msg;
    EXPECT_NE(msg.find("1073741826 bytes, over the limit of 134217728 bytes"), std::string::npos) << msg;
  }
}

// The Tokenizer reader's limits hold for files too big to be real even below a gigabyte.
TEST(JsonLimits, ATextFileJustOverTheLimitIsRefused) {
  test::TempDir dir;
  std::ofstream(dir / "tokenizer.json") << kMinimalTokenizer;
  fs::resize_file(dir / "tokenizer.json", (uintmax_t(128) << 20) + 1);
  EXPECT_THROW(Tokenizer::from_pretrained(dir.path()), FormatError);
}

// Training data is read a line at a time, each line under the same bound: a line of a gigabyte
// is refused once the bound is passed, naming the file and the line.
TEST(JsonLimits, AGigabyteTrainingLineIsRefused) {
  test::TempDir dir;
  {
    std::ofstream f(dir / "train.jsonl");
    f << "{\"input_ids\": [1, 2, 3]}\n{\"text\": \"";
  }
  fs::resize_file(dir / "train.jsonl", (uintmax_t(1) << 30) + 2);
  try {
    load_sft_jsonl(dir / "train.jsonl", nullptr, nullptr, 64);
    ADD_FAILURE() << "no error";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir / "train.jsonl").string() + ":2: a line longer than 134217728 bytes");
  }
}
