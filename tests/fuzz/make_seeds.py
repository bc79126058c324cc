#!/usr/bin/env python3
"""Writes the seeds of the newer fuzz harnesses from ../shared's fixtures (small copies: real
tokenizers cut down to a few hundred vocabulary entries, real chat templates with a short
conversation). Run from the repository root: python3 tests/fuzz/make_seeds.py [SHARED]."""
import json
import os
import sys

SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join("..", "shared")
SEEDS = os.path.join("tests", "fuzz", "seeds")
SEP = "\n----8<----\n"  # fuzz_common.h's kPartSeparator


def write(h, name, text):
    os.makedirs(os.path.join(SEEDS, h), exist_ok=True)
    with open(os.path.join(SEEDS, h, name), "w", encoding="utf-8") as f:
        f.write(text)


def shrink_tokenizer(j, keep=300):
    """The tokenizer with its vocabulary cut to ids < keep (merges and added tokens to match)."""
    m = j["model"]
    if m.get("type") == "Unigram" or isinstance(m.get("vocab"), list):
        m["vocab"] = m["vocab"][:keep]
        if m.get("unk_id") is not None and m["unk_id"] >= keep:
            m["unk_id"] = 0
    else:
        vocab = {k: v for k, v in m["vocab"].items() if v < keep}
        m["vocab"] = vocab
        if "merges" in m:
            merges = []
            for mg in m["merges"]:
                a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
                if a in vocab and b in vocab and a + b in vocab:
                    merges.append(mg)
            m["merges"] = merges
    j["added_tokens"] = [t for t in j.get("added_tokens") or [] if t["id"] < keep or len(j["added_tokens"]) < 40]
    # Post-processor special tokens must exist: keep those the added tokens still have.
    return j


def tokenizers():
    picks = {
        "tinystories": "models/tinystories-656k",
        "gemma_cropped": "fixtures/tokenizers/gemma_cropped_tiny",
        "bert": "fixtures/tokenizers/bert_base_uncased",
        "gpt2": "fixtures/tokenizers/gpt2",
        "llama2": "fixtures/tokenizers/llama2",
        "llama3_regex": "fixtures/tokenizers/llama3_regex_tiny",
        "qwen2": "fixtures/tokenizers/qwen2_regex_tiny",
        "mistral": "fixtures/tokenizers/mistral",
        "marian_unigram": "fixtures/tokenizers-extra/marian_nmt",
        "clip": "fixtures/tokenizers-extra/clip",
        "chatglm": "fixtures/tokenizers-extra/chatglm",
        "wiki_whitespace": "fixtures/tokenizers-extra/tokenizer_wiki",
        "roberta": "fixtures/tokenizers-extra/roberta_base",
        "whisper": "fixtures/tokenizers-extra/whisper_large_v3",
    }
    text = "Hello world! It's 2024, <s> naïve café — 你好 🤗\n\tend  "
    for name, d in picks.items():
        path = os.path.join(SHARED, d)
        j = shrink_tokenizer(json.load(open(os.path.join(path, "tokenizer.json"), encoding="utf-8")))
        cfg = ""
        cp = os.path.join(path, "tokenizer_config.json")
        if os.path.exists(cp):
            c = json.load(open(cp, encoding="utf-8"))
            c.pop("chat_template", None)
            c.pop("added_tokens_decoder", None)
            cfg = json.dumps(c, ensure_ascii=False)
        write("tokenizer_json", name + ".txt", json.dumps(j, ensure_ascii=False) + SEP + cfg + SEP + text)
        write("tokenizer_text", name + ".txt", chr(len(os.listdir(os.path.join(SEEDS, "tokenizer_json"))) - 1) + text)


def chat_templates():
    convo = {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "easy"},
            {"role": "user", "content": "Thanks"},
        ],
        "add_generation_prompt": True,
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
    }
    n = 0
    for root, _, files in sorted(os.walk(os.path.join(SHARED, "fixtures"))):
        for f in sorted(files):
            src = None
            if f == "chat_template.jinja":
                src = open(os.path.join(root, f), encoding="utf-8").read()
            elif f == "tokenizer_config.json":
                ct = json.load(open(os.path.join(root, f), encoding="utf-8")).get("chat_template")
                src = ct if isinstance(ct, str) else (ct[0]["template"] if ct else None)
            if src and len(src) < 20000:
                n += 1
                write("chat_template", "%02d_%s.txt" % (n, os.path.basename(root)), src + SEP + json.dumps(convo))


def adapters():
    for d in ("lora_init", "lora_final"):
        p = os.path.join(SHARED, "fixtures/models/llama", d, "adapter_config.json")
        write("peft_config", d + ".json", open(p, encoding="utf-8").read())
    base = json.load(open(os.path.join(SEEDS, "peft_config", "lora_init.json")))
    base.update({"target_modules": "all-linear"})
    write("peft_config", "all_linear.json", json.dumps(base))
    base.update({"target_modules": ".*\\.(q|v)_proj", "use_rslora": True})
    write("peft_config", "regex.json", json.dumps(base))
    base.update({"target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1],
                 "layers_pattern": "layers", "exclude_modules": ["k_proj"], "modules_to_save": ["lm_head"]})
    write("peft_config", "layers.json", json.dumps(base))


if __name__ == "__main__":
    tokenizers()
    chat_templates()
    adapters()
