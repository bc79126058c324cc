// Tokenizer encode throughput (MB of UTF-8 input per second) on a few MB of mixed text built
// at run time: English-like prose with a Zipf-distributed vocabulary of made-up words (so the
// BPE word cache sees both hits and misses), code, digit runs, and the Unicode strings of the
// tokenizer fixtures (accents, CJK, emoji, Hangul). Documents of ~2 KB are encoded one by one;
// pass 1 starts with an empty BPE cache, pass 2 reuses it; then all hardware threads encode
// disjoint documents in parallel (the tokenizer is shared, encode is const).
//
//   tokenizer_cpu [--mb N] [--dir TOKENIZER_DIR]... [--dump DOCS.json]
//   (default: fixtures gpt2 and llama2; --dump writes the documents, e.g. to time HF on them)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/tokenizer.h"

namespace fs = std::filesystem;
using namespace nibble;
using Clock = std::chrono::steady_clock;

namespace {

fs::path fixtures() {
  if (const char* e = std::getenv("NIBBLE_FIXTURES")) return e;
  return fs::path(NIBBLE_BENCH_SOURCE_DIR) / ".." / "shared" / "fixtures";
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::vector<std::string> make_documents(size_t total_bytes, const std::vector<std::string>& unicode) {
  std::mt19937_64 rng(1234);
  // A made-up vocabulary: 20k words, drawn with Zipf-like weights 1/rank.
  std::vector<std::string> words;
  std::uniform_int_distribution<int> len(1, 10), letter(0, 25);
  for (int i = 0; i < 20000; ++i) {
    std::string w;
    int n = len(rng);
    for (int k = 0; k < n; ++k) w += char('a' + letter(rng));
    if (i % 7 == 0) w[0] = char(w[0] - 32);
    words.push_back(w);
  }
  std::vector<double> weights;
  for (size_t i = 0; i < words.size(); ++i) weights.push_back(1.0 / double(i + 1));
  std::discrete_distribution<size_t> pick(weights.begin(), weights.end());
  const char* code[] = {"def f(x):\n    return x * 2  # comment\n",
                        "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
                        "<html><body class=\"a\">text</body></html>\n", "if err != nil {\n\treturn err\n}\n",
                        "https://example.com/path?q=1&r=2#frag "};
  std::uniform_int_distribution<int> kind(0, 19), digits(1, 12), u(0, int(unicode.size()) - 1), c(0, 4);
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < total_bytes) {
    std::string d;
    while (d.size() < 2048) {
      int k = kind(rng);
      if (k < 14) {
        d += words[pick(rng)];
        d += (k == 0 ? ", " : k == 1 ? ". " : " ");
      } else if (k < 16) {
        std::string n;
        int nd = digits(rng);
        for (int i = 0; i < nd; ++i) n += char('0' + letter(rng) % 10);
        d += n + " ";
      } else if (k < 18) {
        d += code[c(rng)];
      } else {
        d += unicode[size_t(u(rng))] + " ";
      }
    }
    total += d.size();
    docs.push_back(std::move(d));
  }
  return docs;
}

double run(const Tokenizer& tok, const std::vector<std::string>& docs, unsigned threads, size_t& ntokens) {
  std::atomic<size_t> next{0}, count{0};
  auto t0 = Clock::now();
  auto work = [&] {
    size_t mine = 0;
    for (size_t i; (i = next.fetch_add(1)) < docs.size();) mine += tok.encode(docs[i], false).ids.size();
    count += mine;
  };
  if (threads <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work);
    for (auto& th : pool) th.join();
  }
  ntokens = count;
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  double mb = 4;
  std::vector<fs::path> dirs;
  std::string dump;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--mb") && i + 1 < argc)
      mb = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--dump") && i + 1 < argc)
      dump = argv[++i];
    else if (!std::strcmp(argv[i], "--dir") && i + 1 < argc)
      dirs.emplace_back(argv[++i]);
    else {
      std::fprintf(stderr, "usage: tokenizer_cpu [--mb N] [--dir TOKENIZER_DIR]... [--dump DOCS.json]\n");
      return 2;
    }
  }
  if (dirs.empty()) dirs = {fixtures() / "tokenizers" / "gpt2", fixtures() / "tokenizers" / "llama2"};

  std::vector<std::string> unicode;
  {
    std::ifstream f(fixtures() / "tokenizers" / "gpt2" / "reference.json");
    auto ref = nlohmann::json::parse(f);
    for (const auto& c : ref["cases"]) {
      std::string t = c["text"].get<std::string>();
      if (std::any_of(t.begin(), t.end(), [](char ch) { return static_cast<unsigned char>(ch) >= 0x80; }))
        unicode.push_back(t);
    }
  }
  auto docs = make_documents(size_t(mb * 1e6), unicode);
  size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  if (!dump.empty()) std::ofstream(dump) << nlohmann::json(docs).dump();
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  std::printf("machine: %s, %u hardware threads\n", cpu_model().c_str(), hw);
  std::printf("input: %zu documents, %.2f MB of mixed text\n", docs.size(), double(bytes) / 1e6);
  for (const auto& d : dirs) {
    Tokenizer tok = Tokenizer::from_pretrained(d);
    size_t n1 = 0, n2 = 0, n3 = 0;
    double t1 = run(tok, docs, 1, n1);  // empty word cache
    double t2 = run(tok, docs, 1, n2);  // warm cache
    double t3 = run(tok, docs, hw, n3);
    std::printf("%-12s %9zu tokens | 1 thread: %7.2f MB/s cold, %7.2f MB/s warm | %u threads: %7.2f MB/s\n",
                d.filename().string().c_str(), n1, double(bytes) / 1e6 / t1, double(bytes) / 1e6 / t2, hw,
                double(bytes) / 1e6 / t3);
    if (n1 != n2 || n1 != n3) {
      std::fprintf(stderr, "token counts differ between passes (%zu, %zu, %zu)\n", n1, n2, n3);
      return 1;
    }
  }
  return 0;
}
