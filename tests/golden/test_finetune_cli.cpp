// `nibble finetune` and `nibble merge` as a user runs them (the built binary): a run on the
// llama fixture's NF4 + double-quant folder writes the JSONL log, checkpoints and peft's adapter;
// resuming from a checkpoint ends with the same adapter, bit for bit, as the uninterrupted run;
// bad input gives one line on stderr and exit 2; on TinyStories, text and prompt/completion
// data train, and `generate --adapter` gives the tokens of the model merged in 16 bit. Also the
// SFT data formats' labels (assistant-only loss for chat messages).
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "nibble/chat_template.h"
#include "nibble/safetensors.h"
#include "nibble/tokenizer.h"
#include "nibble/train.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;
using test::q;
using test::run_cli;

namespace {

std::string llama_nf4() {
  return (test::fixtures_root() / "models" / "llama" / "nf4_dq").string();
}
std::string tinystories() {
  return (test::shared_root() / "models" / "tinystories-656k").string();
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream(p) << s;
}

// n pre-tokenized examples of lengths 8..20 over a vocabulary of 512.
std::string ids_jsonl(int n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::string out;
  for (int i = 0; i < n; ++i) {
    nlohmann::json ids = nlohmann::json::array();
    for (int t = 0, T = 8 + int(g() % 13); t < T; ++t) ids.push_back(int64_t(g() % 512));
    out += nlohmann::json{{"input_ids", ids}}.dump() + "\n";
  }
  return out;
}

std::vector<nlohmann::json> read_log(const fs::path& p) {
  std::vector<nlohmann::json> v;
  std::ifstream f(p);
  std::string line;
  while (std::getline(f, line)) v.push_back(nlohmann::json::parse(line));
  return v;
}

std::vector<uint8_t> adapter_bytes(const fs::path& dir) {
  return test::read_file(dir / "adapter_model.safetensors");
}

// One line on stderr, exit 2, mentioning `what`.
void expect_error(const test::CliRun& r, const std::string& what) {
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

}  // namespace

TEST(FinetuneCli, LogsCheckpointsAdapterAndResumesExactly) {
  test::TempDir tmp;
  write(tmp / "d.jsonl", ids_jsonl(12, 3));
  const std::vector<std::string> common = {"finetune",
                                           llama_nf4(),
                                           "--data",
                                           (tmp / "d.jsonl").string(),
                                           "--max-steps",
                                           "4",
                                           "--per-device-train-batch-size",
                                           "4",
                                           "--gradient-accumulation-steps",
                                           "2",
                                           "--learning-rate",
                                           "1e-3",
                                           "--logging-steps",
                                           "2",
                                           "--save-steps",
                                           "2",
                                           "--seed",
                                           "1",
                                           "--lora-r",
                                           "4",
                                           "--lora-alpha",
                                           "8",
                                           "--warmup-steps",
                                           "1"};
  auto args = common;
  args.insert(args.end(), {"--output-dir", (tmp / "a").string()});
  auto r = run_cli(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors",
                        "checkpoint-2/adapter_model.safetensors", "checkpoint-2/adapter_config.json",
                        "checkpoint-2/optimizer.safetensors", "checkpoint-2/trainer_state.json"})
    EXPECT_TRUE(fs::exists(tmp / "a" / f)) << f;
  EXPECT_FALSE(fs::exists(tmp / "a" / "checkpoint-4"));  // the end writes the adapter itself
  const auto log = read_log(tmp / "a" / "training_log.jsonl");
  std::vector<int64_t> steps;
  for (const auto& j : log)
    if (j.contains("loss")) {
      steps.push_back(j["step"]);
      for (const char* k : {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s"})
        EXPECT_TRUE(j.contains(k)) << k;
      EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
    }
  EXPECT_EQ(steps, (std::vector<int64_t>{2, 4}));
  // peft's adapter layout, loadable on the base
  LoraConfig cfg = LoraConfig::load(tmp / "a");
  EXPECT_EQ(cfg.r, 4);
  EXPECT_TRUE(cfg.inference_mode);
  PeftModel p = PeftModel::from_pretrained(AutoModelForCausalLM::from_pretrained(llama_nf4()), tmp / "a");
  EXPECT_EQ(p.adapter().modules.size(), 14u);  // all-linear: every projection, not the head
  // resume from checkpoint-2: the same adapter bytes as the uninterrupted run
  args = common;
  args.insert(args.end(), {"--output-dir", (tmp / "b").string(), "--resume-from-checkpoint",
                           (tmp / "a" / "checkpoint-2").string()});
  r = run_cli(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(adapter_bytes(tmp / "b"), adapter_bytes(tmp / "a"));
  EXPECT_NE(adapter_bytes(tmp / "a" / "checkpoint-2"), adapter_bytes(tmp / "a"));
  // resuming with another seed would be another run
  *(std::find(args.begin(), args.end(), "--seed") + 1) = "2";
  expect_error(run_cli(args), "--resume-from-checkpoint: seed is 2, the checkpoint's run had 1");
}

TEST(FinetuneCli, BadInputOneLineExit2) {
  test::TempDir tmp;
  auto ft = [&](const std::string& data, std::vector<std::string> extra = {}) {
    write(tmp / "d.jsonl", data);
    std::vector<std::string> a = {
        "finetune",           llama_nf4(),   "--data", (tmp / "d.jsonl").string(), "--output-dir",
        (tmp / "o").string(), "--max-steps", "2",      "--logging-steps",          "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return run_cli(a);
  };
  expect_error(ft("{\"foo\": 1}\n"),
               "d.jsonl:1: no 'text', 'prompt'+'completion', 'messages' or 'input_ids' field (found: foo)");
  expect_error(ft("{\"prompt\": \"x\"}\n"), "d.jsonl:1: 'prompt' and 'completion' go together");
  expect_error(ft("\n"), "no training examples");
  expect_error(ft("{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n"),
               "'labels' has 2 entries, 'input_ids' 3");
  expect_error(ft("not json\n"), "d.jsonl:1: not JSON");
  expect_error(ft("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 600, 3]}\n"),
               "d.jsonl: example 2: token id 600 is outside the vocabulary of 512");
  expect_error(ft("{\"input_ids\": [1, 2, 3], \"labels\": [-5, 2, 3]}\n"),
               "token id -5 is outside the vocabulary");
  expect_error(ft("{\"text\": \"hello\"}\n"), "needs the model's tokenizer.json");  // the fixture has none
  const std::string ok = ids_jsonl(4, 9);
  expect_error(ft(ok, {"--target-modules", "nope"}),
               "not found in the base model. Linear modules: model.layers.0.self_attn.q_proj");
  expect_error(ft(ok, {"--recompute-granularity", "selective"}),
               "apply with gradient_checkpointing (--gradient-checkpointing true)");
  expect_error(ft(ok, {"--gradient-checkpointing", "true", "--recompute-granularity", "partial"}),
               "--recompute-granularity");
  // an adapter made for another base: qwen2's k_proj has 16 outputs, llama's 32
  const auto qwen = (test::fixtures_root() / "models" / "qwen2" / "fp32").string();
  auto r =
      run_cli({"finetune", qwen, "--data", (tmp / "d.jsonl").string(), "--output-dir", (tmp / "o").string(),
               "--adapter", (test::fixtures_root() / "models" / "llama" / "lora_final").string()});
  expect_error(r, "the base model needs [");
  EXPECT_NE(r.err.find("tensor base_model.model.model.layers."), std::string::npos) << r.err;
  // a loss that blows up: stop, naming the step and the last good checkpoint
  expect_error(ft(ok, {"--learning-rate", "1e30", "--max-grad-norm", "0", "--save-steps", "1"}),
               "last good checkpoint: " + (tmp / "o" / "checkpoint-").string());
  // too long: truncated and counted
  std::string longer = "{\"input_ids\": [";
  for (int i = 0; i < 30; ++i) longer += (i ? "," : "") + std::to_string(i);
  longer += "]}\n";
  auto tr = ft(longer + ok, {"--max-seq-length", "24"});  // the others have 8..20 ids
  ASSERT_EQ(tr.rc, 0) << tr.err;
  const auto log = read_log(tmp / "o" / "training_log.jsonl");
  EXPECT_EQ(log.front()["truncated"], 1);
  EXPECT_EQ(log.back()["truncated"], 1);
}

TEST(FinetuneCli, TinyStoriesTextAndCompletionThenGenerateWithAdapterEqualsMerged) {
  test::TempDir tmp;
  std::string data;
  for (int i = 0; i < 6; ++i) {
    data +=
        nlohmann::json{{"text", "Tom the cat had a red ball. Tom liked the red ball a lot."}}.dump() + "\n";
    data += nlohmann::json{{"prompt", "Once upon a time,"}, {"completion", " there was a dog named Max."}}
                .dump() +
            "\n";
  }
  write(tmp / "d.jsonl", data);
  const std::vector<std::string> quant = {"--load-in-4bit", "--bnb-4bit-quant-type", "nf4",
                                          "--bnb-4bit-use-double-quant"};
  std::vector<std::string> a = {"finetune",
                                tinystories(),
                                "--data",
                                (tmp / "d.jsonl").string(),
                                "--output-dir",
                                (tmp / "ad").string(),
                                "--max-steps",
                                "8",
                                "--learning-rate",
                                "3e-3",
                                "--per-device-train-batch-size",
                                "4",
                                "--lora-r",
                                "8",
                                "--lora-alpha",
                                "16"};
  a.insert(a.end(), quant.begin(), quant.end());
  auto r = run_cli(a);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto end = nlohmann::json::parse(r.out);
  EXPECT_EQ(end["global_step"], 8);
  // merged in 16 bit (dequantized + adapter) generates what base + adapter generates
  std::vector<std::string> m = {
      "merge", tinystories(), "--adapter", (tmp / "ad").string(), "--output-dir", (tmp / "merged").string()};
  m.insert(m.end(), quant.begin(), quant.end());
  r = run_cli(m);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_LT(nlohmann::json::parse(r.out)["drift_rel"].get<double>(), 1e-4);
  // re-quantized: a real NF4 + double-quant model again, its drift reported
  m[5] = (tmp / "merged4").string();
  m.push_back("--requantize");
  r = run_cli(m);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto rq = nlohmann::json::parse(r.out);
  EXPECT_GT(rq["drift_rel"].get<double>(), 0.0);
  EXPECT_GT(rq["drift_mean_kl"].get<double>(), 0.0);
  EXPECT_NE(r.err.find("re-quantized: logits drift from the unmerged model"), std::string::npos) << r.err;
  EXPECT_TRUE(
      nlohmann::json::parse(std::ifstream(tmp / "merged4" / "config.json")).contains("quantization_config"));
  fs::copy_file(tinystories() + "/tokenizer.json", tmp / "merged" / "tokenizer.json");
  std::vector<std::string> g = {"generate", tinystories(), "-p",        "Tom the cat",        "-n",
                                "12",       "--json",      "--adapter", (tmp / "ad").string()};
  g.insert(g.end(), quant.begin(), quant.end());
  auto with_adapter = run_cli(g);
  ASSERT_EQ(with_adapter.rc, 0) << with_adapter.err;
  auto merged = run_cli({"generate", (tmp / "merged").string(), "-p", "Tom the cat", "-n", "12", "--json"});
  ASSERT_EQ(merged.rc, 0) << merged.err;
  EXPECT_EQ(nlohmann::json::parse(with_adapter.out)["ids"], nlohmann::json::parse(merged.out)["ids"]);
  // and the adapter changed the model
  g.resize(g.size() - 6);  // drop --adapter DIR and the quant flags
  g.insert(g.end(), quant.begin(), quant.end());
  auto plain = run_cli(g);
  ASSERT_EQ(plain.rc, 0) << plain.err;
  EXPECT_NE(nlohmann::json::parse(plain.out)["ids"], nlohmann::json::parse(with_adapter.out)["ids"]);
}

TEST(SftData, FormatsAndAssistantOnlyLabels) {
  test::TempDir tmp;
  const fs::path tl = test::fixtures_root() / "tokenizers" / "tinyllama";
  Tokenizer tok = Tokenizer::from_pretrained(tl);
  ChatTemplate tmpl = ChatTemplate::from_pretrained(tl);
  nlohmann::json msgs = nlohmann::json::array({{{"role", "user"}, {"content", "What is two plus two?"}},
                                               {{"role", "assistant"}, {"content", "It is four."}},
                                               {{"role", "user"}, {"content", "And three plus three?"}},
                                               {{"role", "assistant"}, {"content", "Six."}}});
  write(tmp / "d.jsonl", nlohmann::json{{"messages", msgs}}.dump() + "\n" +
                             nlohmann::json{{"prompt", "Q: hi"}, {"completion", " A: hello"}}.dump() + "\n" +
                             nlohmann::json{{"text", "plain text"}}.dump() + "\n");
  SftData d = load_sft_jsonl(tmp / "d.jsonl", &tok, &tmpl, 1024);
  ASSERT_EQ(d.examples.size(), 3u);
  // chat: the learned tokens decode to the assistant turns only
  const SftExample& c = d.examples[0];
  std::vector<int64_t> learned;
  for (size_t i = 0; i < c.labels.size(); ++i)
    if (c.labels[i] != -100) learned.push_back(c.input_ids[i]);
  const std::string text = tok.decode(learned, true);
  EXPECT_NE(text.find("It is four."), std::string::npos) << text;
  EXPECT_NE(text.find("Six."), std::string::npos) << text;
  EXPECT_EQ(text.find("two plus two"), std::string::npos) << text;
  EXPECT_EQ(text.find("three plus three"), std::string::npos) << text;
  // prompt + completion: loss on the completion (and eos) only
  const SftExample& p = d.examples[1];
  const auto prompt_ids = tok.encode("Q: hi").ids;
  for (size_t i = 0; i < prompt_ids.size(); ++i) EXPECT_EQ(p.labels[i], -100);
  EXPECT_EQ(p.input_ids.back(), *tok.token_to_id(*tok.eos_token()));
  EXPECT_EQ(p.labels.back(), p.input_ids.back());
  // text: loss everywhere
  for (size_t i = 0; i < d.examples[2].labels.size(); ++i)
    EXPECT_EQ(d.examples[2].labels[i], d.examples[2].input_ids[i]);
  // packing: blocks of max length, every token kept
  const auto packed = pack_examples(d.examples, 7);
  size_t total = 0, in = 0;
  for (const auto& e : packed) {
    total += e.input_ids.size();
    EXPECT_LE(e.input_ids.size(), 7u);
  }
  for (const auto& e : d.examples) in += e.input_ids.size();
  EXPECT_GE(total + 1, in);
}

// The peft run of the fixtures from the command line: `--adapter lora_init`, the two reference
// sequences as pre-tokenized data, 8 constant-LR AdamW steps without clipping or weight decay
// give peft's losses (logged every step) and its lora_final adapter.
TEST(FinetuneCli, ReproducesThePeftFixtureRun) {
  test::TempDir tmp;
  const fs::path llama = test::fixtures_root() / "models" / "llama";
  Tensor ids = SafetensorsFile::open(llama / "reference.safetensors").get("input_ids");
  std::string data;
  for (int64_t r = 0; r < 2; ++r)
    data += nlohmann::json{{"input_ids", test::row(ids, r, ids.size(1))}}.dump() + "\n";
  write(tmp / "ref.jsonl", data);
  auto r = run_cli({"finetune",
                    llama_nf4(),
                    "--data",
                    (tmp / "ref.jsonl").string(),
                    "--adapter",
                    (llama / "lora_init").string(),
                    "--output-dir",
                    (tmp / "o").string(),
                    "--max-steps",
                    "8",
                    "--learning-rate",
                    "1e-3",
                    "--lr-scheduler-type",
                    "constant",
                    "--max-grad-norm",
                    "0",
                    "--weight-decay",
                    "0",
                    "--per-device-train-batch-size",
                    "2",
                    "--logging-steps",
                    "1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto want = nlohmann::json::parse(std::ifstream(llama / "reference.json"))["lora"]["losses"];
  std::vector<double> got;
  for (const auto& j : read_log(tmp / "o" / "training_log.jsonl"))
    if (j.contains("loss")) got.push_back(j["loss"]);
  ASSERT_EQ(got.size(), 8u);
  for (size_t i = 0; i < 8; ++i)
    EXPECT_NEAR(got[i], want[i].get<double>(), 1e-4 * got[i]) << "step " << i + 1;
  SafetensorsFile a = SafetensorsFile::open(tmp / "o" / "adapter_model.safetensors");
  SafetensorsFile b = SafetensorsFile::open(llama / "lora_final" / "adapter_model.safetensors");
  ASSERT_EQ(a.names(), b.names());
  for (const auto& n : b.names()) {
    Tensor x = a.get(n), y = b.get(n);
    double d = 0, m = 0;
    for (int64_t i = 0; i < y.numel(); ++i) {
      d = std::max(d, double(std::abs(x.data<float>()[i] - y.data<float>()[i])));
      m = std::max(m, double(std::abs(y.data<float>()[i])));
    }
    EXPECT_LT(d / m, 3e-4) << n;
  }
}

// Chat data from the command line: TinyStories given a chat template (a copy of its folder with
// one added to tokenizer_config.json) trains on `messages`; a conversation without an assistant
// turn is an error naming the line.
TEST(FinetuneCli, ChatMessagesTrainOnAssistantTurns) {
  test::TempDir tmp;
  const fs::path src = tinystories(), model = tmp / "model";
  fs::create_directories(model);
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"})
    fs::copy_file(src / f, model / f);
  auto tc = nlohmann::json::parse(std::ifstream(src / "tokenizer_config.json"));
  tc["chat_template"] =
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }}\n"
      "{% else %}Answer: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}Answer:{% endif %}";
  std::ofstream(model / "tokenizer_config.json") << tc.dump();
  std::string data;
  for (int i = 0; i < 4; ++i)
    data += nlohmann::json{{"messages",
                            {{{"role", "user"}, {"content", "Who is Tom?"}},
                             {{"role", "assistant"}, {"content", "Tom is a cat who likes to play."}}}}}
                .dump() +
            "\n";
  write(tmp / "chat.jsonl", data);
  auto r = run_cli({"finetune", model.string(), "--data", (tmp / "chat.jsonl").string(), "--output-dir",
                    (tmp / "o").string(), "--max-steps", "3", "--learning-rate", "1e-3"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["global_step"], 3);
  write(tmp / "bad.jsonl",
        data + nlohmann::json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}}.dump() + "\n");
  expect_error(run_cli({"finetune", model.string(), "--data", (tmp / "bad.jsonl").string(), "--output-dir",
                        (tmp / "o2").string(), "--max-steps", "1"}),
               "bad.jsonl:5: 'messages' has no assistant turn to learn from");
}
