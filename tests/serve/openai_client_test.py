"""The official `openai` Python client against a running `nibble serve` (TinyStories, ChatML).

Usage: openai_client_test.py BASE_URL API_KEY   (BASE_URL ends in /v1). Exits non-zero on the
first failed check. Run by run_openai_client_test.sh, which makes the venv and the server.
"""
import json
import sys
import urllib.request

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)
root = base[: -len("/v1")]


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


def tokens(text):
    req = urllib.request.Request(root + "/tokenize", data=json.dumps({"content": text}).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["tokens"]


models = client.models.list()
check([m.id for m in models.data] == ["tinystories"], "models.list names the served model")

messages = [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Once upon a time, there was a dog"}]
rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"

chat = client.chat.completions.create(model="anything", messages=messages, max_tokens=24, temperature=0)
text = chat.choices[0].message.content
check(isinstance(text, str) and len(text) > 0, "chat completion has content")
check(chat.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
check(chat.usage.prompt_tokens == len(tokens(rendered)), "chat usage.prompt_tokens equals the tokenizer's count")
check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "usage adds up")

stream = client.chat.completions.create(model="anything", messages=messages, max_tokens=24, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.choices:
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check(len(pieces) >= min(3, chat.usage.completion_tokens - 1), f"chat stream arrives in pieces ({len(pieces)} pieces: {pieces!r}, whole: {text!r})")
check("".join(pieces) == text, "streamed chat text equals the whole answer")
check(finish == chat.choices[0].finish_reason, "streamed finish_reason")
check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, "stream usage chunk")

cmpl = client.completions.create(model="x", prompt="Once upon a time", max_tokens=30, temperature=0)
full = cmpl.choices[0].text
check(cmpl.usage.prompt_tokens == len(tokens("Once upon a time")) + 1, "completion prompt_tokens (bos + text)")
stop = full[len(full) // 2: len(full) // 2 + 4]
cut = client.completions.create(model="x", prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop])
check(cut.choices[0].text == full[: full.index(stop)], "stop sequence cuts the text before it")
check(cut.choices[0].finish_reason == "stop", "stop finish_reason")
text_stream = client.completions.create(model="x", prompt="Once upon a time", max_tokens=30, temperature=0,
                                        stream=True)
check("".join(c.choices[0].text for c in text_stream if c.choices) == full, "streamed completion text")

a = client.chat.completions.create(model="x", messages=messages, max_tokens=30, temperature=1, seed=11)
b = client.chat.completions.create(model="x", messages=messages, max_tokens=30, temperature=1, seed=11)
check(a.choices[0].message.content == b.choices[0].message.content, "same seed, same text")

try:
    client.chat.completions.create(model="x", messages=messages, temperature=5)
    check(False, "temperature 5 is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "temperature" in str(e), "temperature 5 -> BadRequestError naming it")

try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "wrong key -> AuthenticationError")
print("all openai client checks passed")
