// The HTTP server in-process on 127.0.0.1 with TinyStories, driven through httplib's client as a
// user's client would: completions and chat (whole and streamed) equal generate() of the same
// prompt alone, usage equals the tokenizer's counts, stop sequences are cut, seeds repeat, and
// every error answers in OpenAI's shape with the right status.
#include <gtest/gtest.h>

#include "nibble/chat_template.h"
#include "serve/openai_response.h"
#include "serve_test_util.h"

using namespace nibble;
using namespace nibble::test;
using nlohmann::json;

namespace {

serve::Server& shared_server() {
  static std::unique_ptr<serve::Server> s = start_server([] {
    serve::ServerOptions o;
    o.scheduler.parallel = 4;
    return o;
  }());
  return *s;
}

const std::string kPrompt = "Once upon a time, there was a little";

}  // namespace

TEST(ServeApi, HealthIs503WhileLoadingThen200) {
  auto s = start_server({}, /*attach=*/false);
  auto c = client(*s);
  Reply h = get(c, "/health");
  EXPECT_EQ(h.status, 503);
  EXPECT_TRUE(h.headers.count("Retry-After"));
  EXPECT_EQ(post(c, "/v1/completions", json{{"prompt", "x"}}).status, 503);
  Reply m = get(c, "/v1/models");  // answers while loading
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(m.body["data"][0]["id"], "tinystories");
  s->attach(tiny_model(), tiny_tokenizer(), nullptr);
  EXPECT_EQ(get(c, "/health").status, 200);
}

TEST(ServeApi, GreedyCompletionEqualsGenerateAloneWithUsage) {
  auto c = client(shared_server());
  const std::vector<int64_t> ids = tiny_tokenizer().encode(kPrompt, true).ids;
  const std::vector<int64_t> expect = greedy_alone(ids, 30);
  Reply r = post(c, "/v1/completions",
                 json{{"model", "whatever"}, {"prompt", kPrompt}, {"max_tokens", 30}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["object"], "text_completion");
  EXPECT_EQ(r.body["model"], "tinystories");
  EXPECT_EQ(r.body["choices"][0]["text"], reply_text(expect));
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], expect.size() == 30 ? "length" : "stop");
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], ids.size());
  EXPECT_EQ(r.body["usage"]["completion_tokens"], expect.size());
  EXPECT_EQ(r.body["usage"]["total_tokens"], ids.size() + expect.size());
  // Token ids as the prompt give the same.
  Reply r2 = post(c, "/v1/completions", json{{"prompt", ids}, {"max_tokens", 30}, {"temperature", 0}});
  ASSERT_EQ(r2.status, 200) << r2.raw;
  EXPECT_EQ(r2.body["choices"][0]["text"], r.body["choices"][0]["text"]);
}

TEST(ServeApi, IgnoreEosRunsToMaxTokens) {
  // llama-server's (and vLLM's) extension, for benchmarks that compare servers by tokens made.
  auto c = client(shared_server());
  const std::string prompt = "Once upon a time";  // ends with eos greedily within 300 tokens
  const std::vector<int64_t> ids = tiny_tokenizer().encode(prompt, true).ids;
  ASSERT_LT(greedy_alone(ids, 400).size(), 400u) << "the prompt should reach eos greedily";
  json req{{"prompt", prompt}, {"max_tokens", 400}, {"temperature", 0}};
  Reply plain = post(c, "/v1/completions", req);
  ASSERT_EQ(plain.status, 200) << plain.raw;
  EXPECT_EQ(plain.body["choices"][0]["finish_reason"], "stop");
  req["ignore_eos"] = true;
  Reply all = post(c, "/v1/completions", req);
  ASSERT_EQ(all.status, 200) << all.raw;
  EXPECT_EQ(all.body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(all.body["usage"]["completion_tokens"], 400);
  const std::string text = all.body["choices"][0]["text"];
  EXPECT_EQ(text.rfind(plain.body["choices"][0]["text"].get<std::string>(), 0), 0u);
  req["ignore_eos"] = "yes";
  EXPECT_EQ(post(c, "/v1/completions", req).status, 400);
}

TEST(ServeApi, ChatUsesTheTemplateAndTokenizeAgrees) {
  auto c = client(shared_server());
  const json messages =
      json::array({{{"role", "system"}, {"content", "Tell a story."}},
                   {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "A cat"}}})}}});
  const std::string rendered = ChatTemplate::from_string(serve::chatml_template())
                                   .apply(json::array({{{"role", "system"}, {"content", "Tell a story."}},
                                                       {{"role", "user"}, {"content", "A cat"}}}),
                                          true);
  Reply tk = post(c, "/tokenize", json{{"content", rendered}});
  ASSERT_EQ(tk.status, 200) << tk.raw;
  const std::vector<int64_t> ids = tk.body["tokens"].get<std::vector<int64_t>>();
  EXPECT_EQ(ids, tiny_tokenizer().encode(rendered, false).ids);
  Reply dt = post(c, "/detokenize", json{{"tokens", ids}});
  ASSERT_EQ(dt.status, 200);
  EXPECT_EQ(dt.body["content"], tiny_tokenizer().decode(ids));

  const std::vector<int64_t> expect = greedy_alone(ids, 24);
  Reply r = post(c, "/v1/chat/completions",
                 json{{"messages", messages}, {"max_completion_tokens", 24}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["object"], "chat.completion");
  EXPECT_EQ(r.body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], reply_text(expect));
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], ids.size());
  EXPECT_EQ(r.body["usage"]["completion_tokens"], expect.size());
}

TEST(ServeApi, StreamingGivesTheSameTextThenDone) {
  auto c = client(shared_server());
  for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
    SCOPED_TRACE(path);
    const bool chat = std::string(path).find("chat") != std::string::npos;
    json req{{"max_tokens", 40}, {"temperature", 0}};
    if (chat)
      req["messages"] = json::array({{{"role", "user"}, {"content", "Tell me about a dog"}}});
    else
      req["prompt"] = kPrompt;
    Reply whole = post(c, path, req);
    ASSERT_EQ(whole.status, 200) << whole.raw;
    req["stream"] = true;
    req["stream_options"] = {{"include_usage", true}};
    httplib::Result res = c.Post(path, req.dump(), "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200);
    EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
    std::vector<json> ev = sse_events(res->body);
    ASSERT_GE(ev.size(), 4u);
    EXPECT_EQ(ev.back(), "[DONE]");
    const json& usage_ev = ev[ev.size() - 2];
    EXPECT_TRUE(usage_ev["choices"].empty());
    EXPECT_EQ(usage_ev["usage"], whole.body["usage"]);
    const json& last = ev[ev.size() - 3];
    EXPECT_EQ(last["choices"][0]["finish_reason"], whole.body["choices"][0]["finish_reason"]);
    for (size_t i = 0; i + 3 < ev.size(); ++i) {
      EXPECT_TRUE(ev[i]["choices"][0]["finish_reason"].is_null());
      EXPECT_TRUE(ev[i]["usage"].is_null());
    }
    if (chat) {
      EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
      EXPECT_EQ(streamed_text(ev), whole.body["choices"][0]["message"]["content"]);
    } else {
      EXPECT_EQ(streamed_text(ev), whole.body["choices"][0]["text"]);
    }
    EXPECT_GT(ev.size(), 6u) << "tokens arrive as separate events";
  }
}

TEST(ServeApi, StopSequencesAreCutWholeAndStreamed) {
  auto c = client(shared_server());
  const std::vector<int64_t> ids = tiny_tokenizer().encode(kPrompt, true).ids;
  const std::string full = reply_text(greedy_alone(ids, 40));
  // A stop sequence from the middle of the greedy text, and one that never occurs.
  const std::string stop = full.substr(full.size() / 2, 4);
  const std::string expect = full.substr(0, full.find(stop));
  json req{{"prompt", kPrompt}, {"max_tokens", 40}, {"temperature", 0}, {"stop", {"QQQQ", stop}}};
  Reply r = post(c, "/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["choices"][0]["text"], expect) << "stop '" << stop << "' in '" << full << "'";
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(r.body["usage"]["completion_tokens"].get<int>(), 40);
  req["stream"] = true;
  httplib::Result s = c.Post("/v1/completions", req.dump(), "application/json");
  ASSERT_TRUE(s);
  std::vector<json> ev = sse_events(s->body);
  EXPECT_EQ(streamed_text(ev), expect);
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "stop");
}

TEST(ServeApi, SameSeedSameTextOtherSeedOtherText) {
  auto c = client(shared_server());
  auto sample = [&](int seed) {
    Reply r = post(
        c, "/v1/completions",
        json{{"prompt", kPrompt}, {"max_tokens", 40}, {"temperature", 1.0}, {"top_p", 0.95}, {"seed", seed}});
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body["choices"][0]["text"].get<std::string>();
  };
  const std::string a = sample(7);
  EXPECT_EQ(sample(7), a);
  EXPECT_NE(sample(8), a);
  // Penalties change sampling but keep the seed deterministic.
  json pen{{"prompt", kPrompt},
           {"max_tokens", 30},
           {"temperature", 0},
           {"frequency_penalty", 2},
           {"presence_penalty", 2}};
  Reply p1 = post(c, "/v1/completions", pen), p2 = post(c, "/v1/completions", pen);
  ASSERT_EQ(p1.status, 200) << p1.raw;
  EXPECT_EQ(p1.body["choices"][0]["text"], p2.body["choices"][0]["text"]);
}

TEST(ServeApi, ErrorsHaveOpenAIShapeAndStatus) {
  auto c = client(shared_server());
  auto expect_error = [&](const std::string& path, const std::string& body, int status,
                          const std::string& param) -> Reply {
    SCOPED_TRACE(path + " " + body.substr(0, 80));
    Reply r = post(c, path, body);
    EXPECT_EQ(r.status, status) << r.raw;
    EXPECT_TRUE(r.body.is_object() && r.body.contains("error")) << r.raw;
    if (!r.body.is_object() || !r.body.contains("error")) return r;
    EXPECT_TRUE(r.body["error"]["message"].is_string());
    EXPECT_FALSE(r.body["error"]["message"].get<std::string>().empty());
    EXPECT_TRUE(r.body["error"]["type"].is_string());
    if (!param.empty()) {
      EXPECT_EQ(r.body["error"]["param"], param);
    }
    return r;
  };
  const std::string chat = "/v1/chat/completions", cmpl = "/v1/completions";
  expect_error(chat, "{\"messages\": [", 400, "");
  expect_error(chat, "not json", 400, "");
  expect_error(chat, "[1, 2]", 400, "");
  expect_error(chat, std::string(100, '[') + std::string(100, ']'), 400, "");
  expect_error(chat, R"({"messages": "hi"})", 400, "messages");
  expect_error(chat, R"({})", 400, "messages");
  expect_error(chat, R"({"messages": []})", 400, "messages");
  expect_error(chat, R"({"messages": [{"role": "wizard", "content": "x"}]})", 400, "messages[0].role");
  expect_error(chat, R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content");
  const std::string m = R"("messages": [{"role": "user", "content": "hi"}])";
  expect_error(chat, "{" + m + R"(, "max_tokens": "ten"})", 400, "max_tokens");
  expect_error(chat, "{" + m + R"(, "max_tokens": 0})", 400, "max_tokens");
  expect_error(chat, "{" + m + R"(, "max_tokens": 2.5})", 400, "max_tokens");
  expect_error(chat, "{" + m + R"(, "temperature": "hot"})", 400, "temperature");
  expect_error(chat, "{" + m + R"(, "temperature": 3})", 400, "temperature");
  expect_error(chat, "{" + m + R"(, "top_p": -1})", 400, "top_p");
  expect_error(chat, "{" + m + R"(, "presence_penalty": 9})", 400, "presence_penalty");
  expect_error(chat, "{" + m + R"(, "stream": "yes"})", 400, "stream");
  expect_error(chat, "{" + m + R"(, "stop": 5})", 400, "stop");
  expect_error(chat, "{" + m + R"(, "stop": ["a","b","c","d","e"]})", 400, "stop");
  expect_error(chat, "{" + m + R"(, "seed": "x"})", 400, "seed");
  expect_error(chat, "{" + m + R"(, "n": 2})", 400, "n");
  expect_error(chat, "{" + m + R"(, "logit_bias": {"5": 100}})", 400, "logit_bias");
  expect_error(chat, "{" + m + R"(, "response_format": {"type": "json_object"}})", 400, "response_format");
  expect_error(chat, "{" + m + R"(, "tools": [{"type": "function"}]})", 400, "tools");
  expect_error(chat, "{" + m + R"(, "model": 7})", 400, "model");
  expect_error(chat, "{" + m + R"(, "stream_options": {"include_usage": true}})", 400, "stream_options");
  expect_error(cmpl, R"({"prompt": 5})", 400, "prompt");
  expect_error(cmpl, R"({"prompt": [1, 99999]})", 400, "prompt");
  expect_error(cmpl, R"({"prompt": [1, -3]})", 400, "prompt");
  expect_error(cmpl, R"({"prompt": "x", "echo": true})", 400, "echo");
  expect_error("/tokenize", R"({"content": 3})", 400, "content");
  expect_error("/detokenize", R"({"tokens": [1, 1e9]})", 400, "tokens");
  expect_error("/detokenize", R"({"tokens": [1, 100000]})", 400, "tokens");
  expect_error("/v1/nothing", "{}", 404, "");
  // A prompt longer than the context names the limit.
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += " the cat sat";
  Reply r = expect_error(cmpl, json{{"prompt", long_prompt}}.dump(), 400, "prompt");
  EXPECT_EQ(r.body["error"]["code"], "context_length_exceeded");
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("512"), std::string::npos) << r.raw;
  // The server keeps serving.
  EXPECT_EQ(get(c, "/health").status, 200);
}

TEST(ServeApi, CtxSizeLimitsPromptAndGeneration) {
  auto s = start_server([] {
    serve::ServerOptions o;
    o.ctx_size = 16;
    return o;
  }());
  auto c = client(*s);
  const std::string prompt =
      "Once upon a time there was a big old dog and a cat. They played in the park all day long.";
  ASSERT_GE(tiny_tokenizer().encode(prompt, true).ids.size(), 16u);  // no room for one token
  Reply r = post(c, "/v1/completions", json{{"prompt", prompt}});
  ASSERT_EQ(r.status, 400);
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("16 tokens"), std::string::npos) << r.raw;
  // Generation stops at the context: prompt + completion <= 16.
  Reply ok = post(c, "/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 100}, {"temperature", 0}});
  ASSERT_EQ(ok.status, 200) << ok.raw;
  EXPECT_LE(ok.body["usage"]["total_tokens"].get<int>(), 16);
}

TEST(ServeApi, ApiKeyIsRequiredExceptForHealth) {
  auto s = start_server([] {
    serve::ServerOptions o;
    o.api_key = "sekrit";
    return o;
  }());
  auto c = client(*s);
  const json req{{"prompt", "Once"}, {"max_tokens", 3}};
  Reply none = post(c, "/v1/completions", req);
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.body["error"]["code"], "invalid_api_key");
  c.set_bearer_token_auth("wrong");
  EXPECT_EQ(post(c, "/v1/completions", req).status, 401);
  EXPECT_EQ(get(c, "/v1/models").status, 401);
  c.set_bearer_token_auth("sekri");
  EXPECT_EQ(post(c, "/v1/completions", req).status, 401);
  EXPECT_EQ(get(c, "/health").status, 200);
  c.set_bearer_token_auth("sekrit");
  EXPECT_EQ(post(c, "/v1/completions", req).status, 200);
  EXPECT_EQ(get(c, "/v1/models").status, 200);
}

TEST(ServeApi, MetricsCountRequestsAndTokens) {
  auto s = start_server();
  auto c = client(*s);
  const std::vector<std::string> names{"nibble_requests_total{status=\"200\"}",
                                       "nibble_requests_total{status=\"400\"}",
                                       "nibble_prompt_tokens_total",
                                       "nibble_generated_tokens_total",
                                       "nibble_time_to_first_token_seconds_count",
                                       "nibble_inter_token_latency_seconds_count",
                                       "nibble_sequences_finished_total"};
  std::vector<double> before;
  for (const auto& n : names) before.push_back(metric(c, n));
  ASSERT_EQ(
      post(c, "/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 5}, {"temperature", 0}}).status,
      200);
  ASSERT_EQ(post(c, "/v1/completions", json{{"prompt", 3}}).status, 400);
  const double prompt_tokens = double(tiny_tokenizer().encode("Once", true).ids.size());
  const std::vector<double> delta{1, 1, prompt_tokens, 5, 1, 4, 1};
  for (size_t i = 0; i < names.size(); ++i) EXPECT_EQ(metric(c, names[i]) - before[i], delta[i]) << names[i];
  EXPECT_EQ(metric(c, "nibble_queue_depth"), 0);
  httplib::Result m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("# TYPE nibble_time_to_first_token_seconds histogram"), std::string::npos);
}
