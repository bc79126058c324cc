// POST /v1/chat/completions and /v1/completions: validate, build the prompt (the chat template,
// or the text tokenized with special tokens as `nibble generate` does, or ids as given), check
// it against the context, submit a Job to the Scheduler, then answer in one JSON body or as
// Server-Sent Events ending in `data: [DONE]`. A client that goes away cancels its job, which
// frees its slot: streamed, by a failed write or the sink finding the socket closed; otherwise
// by its socket (the worker's, conn_stream.h) found closed while the answer is generated.
#include <algorithm>
#include <chrono>

#include "nibble/chat_template.h"
#include "nibble/generation_config.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "serve/conn_stream.h"
#include "serve/connection.h"
#include "serve/openai_response.h"
#include "serve/server_impl.h"

namespace nibble::serve {

using nlohmann::json;
using ojson = nlohmann::ordered_json;
using namespace std::chrono_literals;

namespace {

enum class Kind { Chat, Text };

struct Submitted {
  std::shared_ptr<Job> job;
  int64_t prompt_tokens = 0;
  std::vector<int64_t> eos;
};

// Decoding settings as OpenAI means them: temperature 0 is greedy, otherwise sampling at the
// given temperature (default 1) and top_p (default 1), no top-k; an absent seed is random.
Submitted submit(Server::Impl& s, std::vector<int64_t> prompt, const SamplingRequest& r, const char* param) {
  const int64_t n = int64_t(prompt.size());
  if (n == 0) throw ApiError(400, "The prompt is empty.", param);
  if (n >= s.ctx)
    throw ApiError(
        400,
        detail::str("This model's maximum context length is ", s.ctx, " tokens. However, your ",
                    param == std::string("messages") ? "messages" : "prompt", " resulted in ", n, " tokens."),
        param, "invalid_request_error", "context_length_exceeded");
  GenerateOptions o;
  o.max_new_tokens = std::min(r.max_tokens.value_or(s.ctx - n), s.ctx - n);
  const double t = r.temperature.value_or(1.0);
  o.do_sample = t > 0;
  if (t > 0) o.temperature = t;
  o.top_p = r.top_p.value_or(1.0);
  o.top_k = r.top_k.value_or(0);
  o.min_p = r.min_p;
  o.repetition_penalty = r.repetition_penalty.value_or(1.0);
  o.presence_penalty = r.presence_penalty;
  o.frequency_penalty = r.frequency_penalty;
  o.seed = r.seed ? *r.seed : s.random_seed();
  o.stop_strings = r.stop;
  // ignore_eos: no end token at all, so every request runs to max_tokens (what a benchmark that
  // compares servers by tokens generated needs); the eos id is then ordinary text.
  if (r.ignore_eos) o.eos_token_id = std::vector<int64_t>{};
  const Tokenizer* tok = s.tok;
  o.decode = [tok](const std::vector<int64_t>& ids) { return tok->decode(ids, false); };
  DecodingParams d;
  try {
    d = resolve_decoding(s.model->generation_config(), o, n, s.model->config().max_position_embeddings);
  } catch (const ConfigError& e) {
    throw ApiError(400, e.what());
  }
  auto job = std::make_shared<Job>(std::move(prompt), d, o);
  if (!s.scheduler->submit(job))
    throw ApiError(503, "The server is busy (request queue full) or shutting down; retry later.", {},
                   "server_error", "queue_full");
  return {job, n, d.eos_token_id};
}

const char* finish_name(FinishReason r, bool stop_found) {
  return r == FinishReason::Length && !stop_found ? "length" : "stop";
}

ApiError job_error(const Job::Update& u) {
  if (!u.error.empty()) return ApiError(500, "The model failed: " + u.error, {}, "server_error");
  return ApiError(503, "The request was cancelled: the server is shutting down.", {}, "server_error");
}

void respond_whole(Server::Impl& s, httplib::Response& res, const Submitted& sub, Kind kind,
                   const std::vector<std::string>& stops, const ResponseHead& head) {
  std::vector<int64_t> out;
  Job::Update u;
  // A client that leaves before its answer cancels the job.
  const int fd = current_request_socket();
  do {
    u = sub.job->wait(50ms);
    out.insert(out.end(), u.tokens.begin(), u.tokens.end());
    if (u.done) break;
    if (fd >= 0 && peer_closed(fd)) sub.job->cancel();
  } while (true);
  if (u.cancelled && fd >= 0 && peer_closed(fd))  // nobody to answer; 499 as nginx logs it
    throw ApiError(499, "The client closed the connection.", {}, "invalid_request_error", "client_closed");
  if (!u.error.empty() || u.cancelled) throw job_error(u);
  const int64_t n_out = int64_t(out.size());
  if (u.reason == FinishReason::Eos && !out.empty()) out.pop_back();  // the end token is not text
  const std::string full = s.tok->decode_text(out);
  const std::string text = cut_at_stop(full, stops);
  const char* finish = finish_name(u.reason, text.size() != full.size());
  res.set_content(dump(kind == Kind::Chat ? chat_completion(head, text, finish, sub.prompt_tokens, n_out)
                                          : text_completion(head, text, finish, sub.prompt_tokens, n_out)),
                  "application/json");
}

struct StreamState {
  StreamState(std::shared_ptr<Job> j, const Tokenizer* tok, std::vector<std::string> stops,
              std::vector<int64_t> e)
      : job(std::move(j)),
        eos(std::move(e)),
        streamer([tok](const std::vector<int64_t>& ids) { return tok->decode_text(ids); }),
        trimmer(std::move(stops)) {}
  std::shared_ptr<Job> job;
  std::vector<int64_t> eos;  // an eos token ends the sequence and is not text
  TextStreamer streamer;
  StopTrimmer trimmer;
  int64_t n_out = 0;
  bool started = false;
};

void respond_stream(Server::Impl& s, httplib::Response& res, const Submitted& sub, Kind kind,
                    const std::vector<std::string>& stops, const ResponseHead& head, bool include_usage) {
  auto st = std::make_shared<StreamState>(sub.job, s.tok, stops, sub.eos);
  const int64_t prompt_tokens = sub.prompt_tokens;
  auto chunk = [=](const std::string& text, const char* finish) {
    if (kind == Kind::Text) return sse(text_chunk(head, text, finish, include_usage));
    ojson delta = finish ? ojson::object() : ojson{{"content", text}};
    return sse(chat_chunk(head, delta, finish, include_usage));
  };
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st, chunk, kind, head, include_usage, prompt_tokens](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& data) {
          if (sink.write(data.data(), data.size())) return true;
          st->job->cancel();  // the client is gone
          return false;
        };
        if (!st->started) {
          st->started = true;
          if (kind == Kind::Chat)
            return send(
                sse(chat_chunk(head, ojson{{"role", "assistant"}, {"content", ""}}, nullptr, include_usage)));
        }
        const Job::Update u = st->job->wait(100ms);
        st->n_out += int64_t(u.tokens.size());
        // One event per token, as OpenAI sends them (however many arrived since the last wait).
        for (int64_t t : u.tokens) {
          if (std::find(st->eos.begin(), st->eos.end(), t) != st->eos.end()) continue;
          const std::string delta = st->trimmer.push(st->streamer.push(std::span<const int64_t>(&t, 1)));
          if (!delta.empty() && !send(chunk(delta, nullptr))) return false;
        }
        if (u.tokens.empty() && !u.done && !sink.is_writable()) {
          st->job->cancel();  // closed while we waited for a token
          return false;
        }
        if (!u.done) return true;
        if (!u.error.empty() || u.cancelled) {
          if (!send(sse(error_json(job_error(u))))) return false;
        } else {
          std::string rest = st->trimmer.push(st->streamer.flush());
          rest += st->trimmer.finish(u.reason == FinishReason::StopString);
          if (!rest.empty() && !send(chunk(rest, nullptr))) return false;
          const char* finish = finish_name(u.reason, st->trimmer.stopped());
          if (!send(kind == Kind::Chat ? chunk("", finish) : chunk("", finish))) return false;
          if (include_usage &&
              !send(sse(usage_chunk(head, kind == Kind::Chat ? "chat.completion.chunk" : "text_completion",
                                    prompt_tokens, st->n_out))))
            return false;
        }
        if (!send("data: [DONE]\n\n")) return false;
        sink.done();
        return true;
      },
      [st](bool) { st->job->cancel(); });  // no effect once the job is done
}

ResponseHead head_for(Server::Impl& s, Kind kind) {
  ResponseHead h;
  h.id = detail::str(kind == Kind::Chat ? "chatcmpl-" : "cmpl-", s.started_at, "-", s.next_id.fetch_add(1));
  h.created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  h.model = s.opt.model_name;
  return h;
}

void answer(Server::Impl& s, httplib::Response& res, const Submitted& sub, Kind kind,
            const SamplingRequest& r) {
  const ResponseHead head = head_for(s, kind);
  if (r.stream)
    respond_stream(s, res, sub, kind, r.stop, head, r.include_usage);
  else
    respond_whole(s, res, sub, kind, r.stop, head);
}

}  // namespace

void handle_chat(Server::Impl& s, const httplib::Request& req, httplib::Response& res) {
  s.require_ready();
  const ChatRequest r = parse_chat_request(parse_body(req.body));
  std::string rendered;
  try {
    rendered = s.tmpl->apply(r.messages, /*add_generation_prompt=*/true);
  } catch (const Error& e) {  // the template's raise_exception (e.g. roles must alternate)
    throw ApiError(400, detail::str("The chat template rejected the messages: ", e.what()), "messages");
  }
  Submitted sub =
      submit(s, s.tok->encode(rendered, /*add_special_tokens=*/false).ids, r.sampling, "messages");
  answer(s, res, sub, Kind::Chat, r.sampling);
}

void handle_completion(Server::Impl& s, const httplib::Request& req, httplib::Response& res) {
  s.require_ready();
  const CompletionRequest r = parse_completion_request(parse_body(req.body));
  std::vector<int64_t> ids;
  if (r.prompt) {
    ids = s.tok->encode(*r.prompt, /*add_special_tokens=*/true).ids;
  } else {
    ids = *r.ids;
    const int64_t vocab = s.model->config().vocab_size;
    for (int64_t id : ids)
      if (id < 0 || id >= vocab)
        throw ApiError(
            400, detail::str("Invalid value for 'prompt': token id ", id, " is outside [0, ", vocab, ")."),
            "prompt", "invalid_request_error", "invalid_value");
  }
  Submitted sub = submit(s, std::move(ids), r.sampling, "prompt");
  answer(s, res, sub, Kind::Text, r.sampling);
}

}  // namespace nibble::serve
