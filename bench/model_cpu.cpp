// Whole-model CPU benchmark: for each model, unquantized (stored dtype) and NF4 + double quant,
// load (+ quantize) wall time, RSS after load and peak RSS (VmHWM) next to
// get_memory_footprint(), prefill tokens/s (one forward of T random ids, median of 3 after a
// first, checked forward) and decode tokens/s (N greedy single-token forwards through the KV
// cache after a prefill). Each (model, variant) runs in a fresh child process (fork + exec of
// this binary) so that its VmHWM is its own. A further child times the two parts of the NF4
// load separately: touching every checkpoint page, and quantize_4bit over the Linear weights.
//
//   model_cpu [--tinystories DIR] [--model DIR]... [--llama1b] [--no-tinystories]
//             [--threads N] [--prefill T[,T...]] [--decode N] [--decode-1b N] [--tmp DIR]
//             [--variants stored,nf4,int8] [--prefill-last] [--no-breakdown] [--json PATH]
//   model_cpu --write-llama1b DIR
//
// --llama1b writes a random-weight model of Llama-3.2-1B shape (bf16, ~2.5 GB) into a temporary
// folder (under --tmp, default /tmp), benchmarks it, and deletes it at the end; --write-llama1b
// only writes it (for bench/vs_llamacpp.sh, which converts the same folder for llama.cpp).
// Variants: stored (the checkpoint's dtype), nf4 (NF4 + double quant), int8 (LLM.int8,
// threshold 6.0); default stored,nf4. --prefill-last: prefill computes the logits of the last
// row only (forward_last, as generation and llama-bench do) instead of all rows.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

// KVCache is only forward-declared in nibble/model.h; destroying the unique_ptr new_cache()
// returns needs its definition.
#include "models/causal_lm_impl.h"
#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/quant.h"
#include "nibble/safetensors.h"
#include "nibble/thread_pool.h"
#include "random_model.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace nibble;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---- /proc readers --------------------------------------------------------------------------
int64_t proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') return std::atoll(line.c_str() + n + 1);
  return -1;
}
double mib_of_kb(int64_t kb) { return double(kb) / 1024.0; }

std::vector<double> loadavg() {
  std::ifstream f("/proc/loadavg");
  double a = 0, b = 0, c = 0;
  f >> a >> b >> c;
  return {a, b, c};
}

json machine_info() {
  json m;
  std::ifstream f("/proc/cpuinfo");
  std::string line, model, flags;
  while (std::getline(f, line)) {
    if (model.empty() && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = line.substr(line.find(':') + 2);
  }
  std::vector<std::string> simd;
  for (const char* fl : {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "amx_bf16"}) {
    std::istringstream is(flags);
    std::string w;
    while (is >> w)
      if (w == fl) simd.push_back(fl);
  }
  m["cpu"] = model;
  m["logical_cores"] = std::thread::hardware_concurrency();
  m["simd"] = simd;
  std::ifstream mi("/proc/meminfo");
  std::string k;
  int64_t v = 0;
  while (mi >> k >> v) {
    if (k == "MemTotal:") m["mem_total_gib"] = double(v) / (1024.0 * 1024.0);
    std::getline(mi, line);
  }
  return m;
}

// Read bandwidth of this machine with the benchmark's threads: a 1 GiB buffer (far past the
// caches) summed by every thread over its own slice, best of 5 (GB/s). The decode floor of a
// model is this over the bytes one token reads (its footprint: every weight once, the head
// included).
double read_gbps() {
  const size_t n = size_t(1) << 27;  // uint64 values: 1 GiB
  std::vector<uint64_t> a(n);
  for (size_t i = 0; i < n; ++i) a[i] = i;
  const int64_t chunks = 256;
  double best = 0;
  std::atomic<uint64_t> sink{0};
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
      uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (size_t i = size_t(c0) * (n / chunks); i < size_t(c1) * (n / chunks); i += 8)
        for (int l = 0; l < 8; ++l) acc[l] += a[i + size_t(l)];
      sink += acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
    });
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(n * sizeof(uint64_t)) / sec / 1e9);
  }
  return sink.load() == 1 ? 0.0 : best;  // (sink read so the sums are kept)
}

// ---- one measurement (runs in a child process) ---------------------------------------------
std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  bench::SplitMix64 r{seed};
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = int64_t(r.next() % uint64_t(vocab));
  return ids;
}

bool all_finite(const Tensor& logits) {
  const float* p = logits.data<float>();
  for (int64_t i = 0; i < logits.numel(); ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

int64_t argmax_last(const Tensor& logits) {
  const int64_t V = logits.size(1);
  const float* p = logits.data<float>() + (logits.size(0) - 1) * V;
  return int64_t(std::max_element(p, p + V) - p);
}

// User + system CPU seconds of this process (all threads).
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

std::optional<BitsAndBytesConfig> nf4_config(const ModelConfig& c) {
  // bf16 compute for a bf16 checkpoint, f32 otherwise (as one would pick in transformers).
  const bool bf16 = c.raw.value("torch_dtype", std::string()) == "bfloat16";
  return BitsAndBytesConfig{.load_in_4bit = true,
                            .bnb_4bit_compute_dtype = bf16 ? "bfloat16" : "float32",
                            .bnb_4bit_quant_type = "nf4",
                            .bnb_4bit_use_double_quant = true};
}

json run_child(const fs::path& dir, const std::string& variant, const std::vector<int64_t>& prefills, int64_t decode,
              bool prefill_last) {
  json r;
  r["loadavg_start"] = loadavg();
  LoadOptions opts;
  if (variant == "nf4") opts.quantization_config = nf4_config(ModelConfig::from_file(dir / "config.json"));
  if (variant == "int8") opts.quantization_config = BitsAndBytesConfig{.load_in_8bit = true};
  auto t0 = Clock::now();
  CausalLM model = AutoModelForCausalLM::from_pretrained(dir, opts);
  r["load_s"] = seconds_since(t0);
  r["rss_after_load_mib"] = mib_of_kb(proc_status_kb("VmRSS"));
  r["peak_rss_after_load_mib"] = mib_of_kb(proc_status_kb("VmHWM"));
  r["footprint_mib"] = double(model.get_memory_footprint()) / (1024.0 * 1024.0);
  if (opts.quantization_config) r["quantization_config"] = opts.quantization_config->to_dict();
  const int64_t V = model.config().vocab_size;

  // Timed runs: at least 3, more while under ~1 s in all (tiny models), median and best.
  auto timed = [](const std::function<void()>& fn, int min_reps, int max_reps, double budget_s) {
    std::vector<double> ts;
    double cpu0 = cpu_seconds();
    auto start = Clock::now();
    do {
      auto b = Clock::now();
      fn();
      ts.push_back(seconds_since(b));
    } while (int(ts.size()) < min_reps || (seconds_since(start) < budget_s && int(ts.size()) < max_reps));
    double wall = seconds_since(start), cpu = cpu_seconds() - cpu0;
    return std::make_tuple(ts, cpu / (wall * num_threads()));
  };

  json pf = json::array();
  for (size_t i = 0; i < prefills.size(); ++i) {
    const int64_t T = prefills[i];
    auto ids = random_ids(T, V, 1000 + uint64_t(T));
    auto fwd = [&] { return prefill_last ? model.forward_last(ids) : model.forward(ids); };
    auto a = Clock::now();
    Tensor logits = fwd();
    double first = seconds_since(a);
    if (logits.dim() != 2 || logits.size(0) != (prefill_last ? 1 : T) || logits.size(1) != V)
      throw std::runtime_error("prefill logits have shape " + shape_str(logits.shape()));
    if (!all_finite(logits)) throw std::runtime_error("prefill logits are not all finite (T=" + std::to_string(T) + ")");
    auto [ts, share] = timed([&] { Tensor l2 = fwd(); }, 3, 50, 1.0);
    double m = median(ts), best = *std::min_element(ts.begin(), ts.end());
    pf.push_back({{"tokens", T}, {"first_forward_s", first}, {"runs", ts.size()}, {"median_s", m},
                  {"tokens_per_s", double(T) / m}, {"best_tokens_per_s", double(T) / best},
                  {"cpu_share", share}});
  }
  r["prefill"] = pf;
  r["prefill_logits"] = prefill_last ? "last row" : "all rows";

  if (decode > 0) {
    const int64_t T = prefills.front();
    auto ids = random_ids(T, V, 1000 + uint64_t(T));
    std::vector<double> decode_s, steps;  // per repetition: time of the `decode` steps
    double cpu_decode = 0, wall_decode = 0;
    bool finite = true;
    auto start = Clock::now();
    do {
      auto cache = model.new_cache();
      Tensor logits = model.forward(ids, cache.get());
      double c0 = cpu_seconds();
      auto a = Clock::now();
      for (int64_t s = 0; s < decode; ++s) {
        std::vector<int64_t> next{argmax_last(logits)};
        auto b = Clock::now();
        logits = model.forward(next, cache.get());
        steps.push_back(seconds_since(b));
        if (!all_finite(logits)) finite = false;
      }
      decode_s.push_back(seconds_since(a));
      wall_decode += decode_s.back();
      cpu_decode += cpu_seconds() - c0;
    } while (seconds_since(start) < 1.0 && decode_s.size() < 20);
    if (!finite) throw std::runtime_error("decode logits are not all finite");
    double m = median(decode_s), best = *std::min_element(decode_s.begin(), decode_s.end());
    r["decode"] = {{"context", T},
                   {"steps", decode},
                   {"reps", decode_s.size()},
                   {"median_s", m},
                   {"tokens_per_s", double(decode) / m},
                   {"best_tokens_per_s", double(decode) / best},
                   {"median_step_ms", median(steps) * 1e3},
                   {"cpu_share", cpu_decode / (wall_decode * num_threads())}};
  }
  r["rss_end_mib"] = mib_of_kb(proc_status_kb("VmRSS"));
  r["peak_rss_mib"] = mib_of_kb(proc_status_kb("VmHWM"));
  r["loadavg_end"] = loadavg();
  return r;
}

// The two parts of an NF4 load, timed apart: faulting in every page of the checkpoint (warm
// page cache: the copy from the page cache into this process's mapping), then quantize_4bit
// (NF4, blocksize 64, double quant) of every weight from_pretrained would quantize.
json run_breakdown(const fs::path& dir) {
  json r;
  auto t0 = Clock::now();
  Checkpoint ck = Checkpoint::open(dir);
  std::vector<std::string> names = ck.names();
  uint64_t sum = 0;
  size_t bytes = 0;
  for (const auto& n : names) {
    Tensor x = ck.get(n);
    auto b = x.bytes();
    for (size_t i = 0; i < b.size(); i += 4096) sum += b[i];
    bytes += b.size();
  }
  r["touch_pages_s"] = seconds_since(t0);
  r["checkpoint_mib"] = double(bytes) / (1024.0 * 1024.0);
  r["checksum"] = sum;
  double q = 0;
  size_t qbytes = 0;
  for (const auto& n : names) {
    if (n.find("_proj.weight") == std::string::npos && n.find("fc") == std::string::npos) continue;
    Tensor x = ck.get(n);
    if (x.dim() != 2) continue;
    auto a = Clock::now();
    Quantized4 qq = quantize_4bit(x, DType::NF4, 64, true);
    q += seconds_since(a);
    qbytes += x.nbytes();
  }
  r["quantize_s"] = q;
  r["quantized_input_mib"] = double(qbytes) / (1024.0 * 1024.0);
  r["quantize_input_gbs"] = double(qbytes) / q / 1e9;
  // The whole NF4 from_pretrained again, in the same conditions, for the remainder.
  LoadOptions opts;
  opts.quantization_config = nf4_config(ModelConfig::from_file(dir / "config.json"));
  auto t1 = Clock::now();
  CausalLM model = AutoModelForCausalLM::from_pretrained(dir, opts);
  r["nf4_load_s"] = seconds_since(t1);
  return r;
}

// ---- parent ----------------------------------------------------------------------------------
std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) v.push_back(std::stoll(x));
  return v;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// Runs this binary with args in a fresh process; returns the JSON it wrote.
json spawn(const std::vector<std::string>& args) {
  fs::path out = fs::temp_directory_path() / ("model_cpu_child_" + std::to_string(getpid()) + ".json");
  std::vector<std::string> a = {"/proc/self/exe", "--child-out", out.string()};
  a.insert(a.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : a) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    execv("/proc/self/exe", argv.data());
    std::perror("execv");
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::error_code ec;
    fs::remove(out, ec);
    return json{{"error", "child failed (status " + std::to_string(st) + ")"}};
  }
  json j = json::parse(std::ifstream(out));
  fs::remove(out);
  return j;
}

fs::path default_tinystories() {
  // The project root is two levels above bench/model_cpu.cpp; models live in ../shared/models.
  fs::path src = fs::path(__FILE__).parent_path().parent_path();
  return src.parent_path() / "shared" / "models" / "tinystories-656k";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  fs::path tinystories = default_tinystories();
  std::vector<fs::path> models;
  bool use_tiny = true, llama1b = false;
  int threads = 0;
  std::vector<int64_t> prefills;  // empty: per-model default
  int64_t decode = 32, decode_1b = -1;
  fs::path tmp = "/tmp", json_path, child_out, child_dir;
  std::string child_variant;
  bool breakdown = false, prefill_last = false, with_breakdown = true;
  std::vector<std::string> variants = {"stored", "nf4"};
  fs::path write_dir;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "model_cpu: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return args[++i];
    };
    if (a == "--tinystories") tinystories = val();
    else if (a == "--no-tinystories") use_tiny = false;
    else if (a == "--model") models.emplace_back(val());
    else if (a == "--llama1b") llama1b = true;
    else if (a == "--threads") threads = std::stoi(val());
    else if (a == "--prefill") prefills = parse_list(val());
    else if (a == "--decode") decode = std::stoll(val());
    else if (a == "--decode-1b") decode_1b = std::stoll(val());
    else if (a == "--tmp") tmp = val();
    else if (a == "--json") json_path = val();
    else if (a == "--child-out") child_out = val();
    else if (a == "--child-dir") child_dir = val();
    else if (a == "--child-variant") child_variant = val();
    else if (a == "--child-breakdown") breakdown = true;
    else if (a == "--prefill-last") prefill_last = true;
    else if (a == "--no-breakdown") with_breakdown = false;
    else if (a == "--write-llama1b") write_dir = val();
    else if (a == "--variants") {
      variants.clear();
      std::stringstream ss(val());
      for (std::string v; std::getline(ss, v, ',');) variants.push_back(v);
    } else {
      std::fprintf(stderr,
                   "usage: model_cpu [--tinystories DIR] [--no-tinystories] [--model DIR]... [--llama1b]\n"
                   "                 [--threads N] [--prefill T[,T..]] [--decode N] [--decode-1b N] [--tmp DIR]\n"
                   "                 [--variants stored,nf4,int8] [--prefill-last] [--no-breakdown] [--json PATH]\n"
                   "       model_cpu --write-llama1b DIR\n");
      return 2;
    }
  }
  set_num_threads(threads);
  if (!write_dir.empty()) {
    bench::write_llama(bench::kLlama32_1b, write_dir);
    return 0;
  }

  if (!child_out.empty()) {  // child: one measurement
    try {
      json r = breakdown ? run_breakdown(child_dir) : run_child(child_dir, child_variant, prefills, decode, prefill_last);
      std::ofstream(child_out) << r.dump();
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "model_cpu child (%s, %s): %s\n", child_dir.c_str(), child_variant.c_str(), e.what());
      return 1;
    }
  }

  struct Job {
    std::string name;
    fs::path dir;
    std::vector<int64_t> prefills;
    int64_t decode;
    bool generated;
  };
  std::vector<Job> jobs;
  if (use_tiny) jobs.push_back({"tinystories-656k", tinystories, prefills.empty() ? std::vector<int64_t>{128, 512} : prefills,
                                decode, false});
  for (const auto& m : models)
    jobs.push_back({m.filename().string(), m, prefills.empty() ? std::vector<int64_t>{128} : prefills, decode, false});

  json out;
  out["bench"] = "model_cpu";
  out["machine"] = machine_info();
  out["threads"] = num_threads();
  out["loadavg_start"] = loadavg();
  out["read_gbps"] = read_gbps();
  out["notes"] =
      "Each (model, variant) in a fresh process. load_s: from_pretrained wall time, page cache warm "
      "(unquantized loads mmap the safetensors file, so their weights are paged in by the first forward: "
      "see prefill first_forward_s). peak_rss_mib: VmHWM over load + all forwards, which counts the "
      "mmap'd checkpoint pages touched (file-backed, reclaimable). footprint_mib: get_memory_footprint(). "
      "prefill: forward of T random ids with a fresh cache, median of 3 after a first (checked-finite) "
      "forward, repeated while under 1 s in all (up to 50), median (tokens_per_s) and best. decode: greedy "
      "single-token forwards through the KV cache after a prefill of `context` random ids, `steps` of them "
      "per repetition, repeated while under 1 s (up to 20); tokens_per_s = steps / median repetition time. "
      "cpu_share: process CPU time / (wall time x threads) over the timed runs; below 1 means other "
      "processes took cores (see loadavg). nf4_load_breakdown: in one further process, faulting in every "
      "checkpoint page, quantize_4bit over the weights from_pretrained quantizes, then a whole NF4 "
      "from_pretrained. nf4: NF4, blocksize 64, double quant, lm_head "
      "(tied embedding) left unquantized as transformers does; compute bf16 for the bf16 checkpoint, f32 "
      "for the f32 one.";

  fs::path gen_dir;
  if (llama1b) {
    gen_dir = tmp / ("nibble_llama1b_" + std::to_string(getpid()));
    auto sp = fs::space(tmp);
    if (sp.available < (uint64_t(6) << 30)) {
      std::fprintf(stderr, "model_cpu: %s has %.1f GiB free; the 1B model needs ~2.5 GiB (6 wanted)\n", tmp.c_str(),
                   double(sp.available) / double(1ull << 30));
      return 1;
    }
    std::printf("generating random Llama-3.2-1B-shape bf16 checkpoint in %s ...\n", gen_dir.c_str());
    auto t0 = Clock::now();
    bench::write_llama(bench::kLlama32_1b, gen_dir);
    double g = seconds_since(t0);
    std::printf("  %.1f s, %.2f GiB\n", g, double(fs::file_size(gen_dir / "model.safetensors")) / double(1ull << 30));
    out["llama1b_generate_s"] = g;
    jobs.push_back({"llama-3.2-1b-shape (random bf16)", gen_dir, prefills.empty() ? std::vector<int64_t>{128} : prefills,
                    decode_1b >= 0 ? decode_1b : decode, true});
  }

  json results = json::array();
  for (const auto& job : jobs) {
    json mj;
    mj["model"] = job.name;
    mj["path"] = job.generated ? std::string("(generated, deleted)") : job.dir.string();
    ModelConfig cfg = ModelConfig::from_file(job.dir / "config.json");
    mj["stored_dtype"] = cfg.raw.value("torch_dtype", std::string("?"));
    int64_t fbytes = 0;
    for (const auto& e : fs::directory_iterator(job.dir))
      if (e.path().extension() == ".safetensors") fbytes += int64_t(e.file_size());
    mj["checkpoint_mib"] = double(fbytes) / (1024.0 * 1024.0);
    json vars = json::object();
    for (const std::string& v : variants) {
      std::printf("%s / %s ...\n", job.name.c_str(), v.c_str());
      std::vector<std::string> a = {"--child-dir", job.dir.string(), "--child-variant", v, "--threads",
                                    std::to_string(num_threads()), "--prefill", join(job.prefills), "--decode",
                                    std::to_string(job.decode)};
      if (prefill_last) a.push_back("--prefill-last");
      vars[v] = spawn(a);
    }
    if (with_breakdown) {
      std::printf("%s / nf4 load breakdown ...\n", job.name.c_str());
      vars["nf4_load_breakdown"] = spawn({"--child-dir", job.dir.string(), "--child-breakdown", "--threads",
                                          std::to_string(num_threads())});
    }
    mj["variants"] = vars;
    results.push_back(mj);
  }
  out["results"] = results;
  out["loadavg_end"] = loadavg();
  if (!gen_dir.empty()) {
    std::error_code ec;
    fs::remove_all(gen_dir, ec);
  }

  // Table.
  std::printf("\nthreads %d, %s (%d logical cores)\n", num_threads(), out["machine"]["cpu"].get<std::string>().c_str(),
              out["machine"]["logical_cores"].get<int>());
  // floor: decode tok/s over read bandwidth / footprint (models of 256 MiB or more; smaller
  // ones are read from the caches).
  const double gbps = out["read_gbps"].get<double>();
  std::printf("read bandwidth %.1f GB/s\n", gbps);
  std::printf("%-34s %-6s %8s %9s %9s %9s %23s %11s %6s %6s\n", "model", "var", "load s", "RSS MiB", "peak MiB",
              "fprnt MiB", "prefill tok/s @T", "decode t/s", "cpu%", "floor");
  for (const auto& mj : results) {
    for (const std::string& vs : variants) {
      const char* v = vs.c_str();
      const json& r = mj["variants"][vs];
      if (r.contains("error")) {
        std::printf("%-34s %-6s %s\n", mj["model"].get<std::string>().c_str(), v, r["error"].get<std::string>().c_str());
        continue;
      }
      std::string pfs;
      for (const auto& p : r["prefill"]) {
        char b[64];
        std::snprintf(b, sizeof b, "%s%.1f@%lld", pfs.empty() ? "" : " ", p["tokens_per_s"].get<double>(),
                      static_cast<long long>(p["tokens"].get<int64_t>()));
        pfs += b;
      }
      std::string var = vs == "stored" ? mj["stored_dtype"].get<std::string>() : vs;
      if (var == "bfloat16") var = "bf16";
      if (var == "float32") var = "f32";
      const bool dec = r.contains("decode");
      const double fp = r["footprint_mib"].get<double>();
      char floor[16] = "-";
      if (dec && fp >= 256.0)
        std::snprintf(floor, sizeof floor, "%.0f%%",
                      100.0 * r["decode"]["tokens_per_s"].get<double>() / (gbps * 1e9 / (fp * 1048576.0)));
      std::printf("%-34s %-6s %8.3f %9.1f %9.1f %9.1f %23s %11.2f %5.0f%% %6s\n", mj["model"].get<std::string>().c_str(),
                  var.c_str(), r["load_s"].get<double>(), r["rss_after_load_mib"].get<double>(),
                  r["peak_rss_mib"].get<double>(), fp, pfs.c_str(), dec ? r["decode"]["tokens_per_s"].get<double>() : 0.0,
                  dec ? 100.0 * r["decode"]["cpu_share"].get<double>() : 0.0, floor);
    }
    if (!mj["variants"].contains("nf4_load_breakdown")) continue;
    const json& b = mj["variants"]["nf4_load_breakdown"];
    if (!b.contains("error"))
      std::printf("  nf4 load parts (one process): from_pretrained %.3f s = touch checkpoint pages %.3f s + "
                  "quantize_4bit %.3f s (%.2f GB/s of bf16/f32 input) + rest\n",
                  b["nf4_load_s"].get<double>(), b["touch_pages_s"].get<double>(), b["quantize_s"].get<double>(),
                  b["quantize_input_gbs"].get<double>());
  }
  if (!json_path.empty()) {
    std::ofstream(json_path) << out.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}
