// The server's pure parts: request validation (types, ranges, nesting) and stop-sequence
// trimming of streamed text, without HTTP.
#include <gtest/gtest.h>

#include "serve/openai_request.h"
#include "serve/openai_response.h"

using namespace nibble::serve;
using nlohmann::json;

TEST(OpenAITypes, StopTrimmerHoldsBackPrefixesAndCutsTheStop) {
  StopTrimmer t({"END", "xy"});
  EXPECT_EQ(t.push("hello E"), "hello ");  // "E" may start END
  EXPECT_EQ(t.push("N"), "");
  EXPECT_EQ(t.push("D and more"), "");  // END completed: nothing after it
  EXPECT_TRUE(t.stopped());
  EXPECT_EQ(t.finish(true), "");

  StopTrimmer u({"END"});
  EXPECT_EQ(u.push("an E"), "an ");
  EXPECT_EQ(u.push("ND"), "");  // "END" straddles two pushes
  EXPECT_TRUE(u.stopped());

  StopTrimmer v({"END"});
  EXPECT_EQ(v.push("the EN"), "the ");
  EXPECT_EQ(v.push("d"), "ENd");  // not a stop after all
  EXPECT_EQ(v.push(" E"), " ");
  EXPECT_EQ(v.finish(false), "E");  // held back, shown at the end (length)

  StopTrimmer w({});
  EXPECT_EQ(w.push("abc"), "abc");
  EXPECT_EQ(w.finish(false), "");
  EXPECT_EQ(cut_at_stop("one two three", {"three", "two"}), "one ");
  EXPECT_EQ(cut_at_stop("one", {"x"}), "one");
}

TEST(OpenAITypes, RequestValidation) {
  EXPECT_THROW(parse_body("{"), ApiError);
  EXPECT_THROW(parse_body("\"str\""), ApiError);
  EXPECT_THROW(parse_body(std::string(10000, '[') + std::string(10000, ']')), ApiError);
  EXPECT_NO_THROW(parse_body(R"({"a": [[[1]]]})"));
  try {
    parse_chat_request(json::parse(R"({"messages": [{"role": "user", "content": "x"}], "top_p": "high"})"));
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), "top_p");
    EXPECT_EQ(error_json(e)["error"]["param"], "top_p");
  }
  const ChatRequest c = parse_chat_request(json::parse(
      R"({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                       {"role": "assistant", "content": null}],
          "max_tokens": 5, "max_completion_tokens": 7, "stop": "\n", "seed": -1, "temperature": null,
          "stream": true, "stream_options": {"include_usage": true}, "user": "ignored"})"));
  EXPECT_EQ(c.messages[0]["role"], "system");
  EXPECT_EQ(c.messages[0]["content"], "ab");
  EXPECT_EQ(c.messages[1]["content"], "");
  EXPECT_EQ(*c.sampling.max_tokens, 7);  // max_completion_tokens wins
  EXPECT_EQ(c.sampling.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(*c.sampling.seed, ~uint64_t(0));
  EXPECT_FALSE(c.sampling.temperature);  // null = absent
  EXPECT_TRUE(c.sampling.include_usage);
  const CompletionRequest ids = parse_completion_request(json::parse(R"({"prompt": [[1, 2, 3]]})"));
  EXPECT_EQ(*ids.ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_THROW(parse_completion_request(json::parse(R"({"prompt": ["a", "b"]})")), ApiError);
  EXPECT_THROW(parse_completion_request(json::parse(R"({"prompt": [1, "b"]})")), ApiError);
  EXPECT_THROW(
      parse_completion_request(json::parse(R"({"prompt": [1], "max_tokens": 18446744073709551615})")),
      ApiError);
  EXPECT_THROW(get_ids(json::parse(R"({"tokens": [18446744073709551615]})"), "tokens", 10), ApiError);
}
