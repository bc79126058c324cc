#!/usr/bin/env bash
# nibble against llama.cpp on this machine's CPU: the same random-weight Llama-3.2-1B-shape HF
# folder (bench/model_cpu --write-llama1b, with the Llama-3 tokenizer of the fixtures), the
# same thread count, runs interleaved round by round, medians and ratios printed and written
# to a JSON file. llama.cpp is built outside the repository (never committed; see PEERS.md)
# and its GGUF files come from its own convert_hf_to_gguf.py, run through
# bench/llamacpp_convert.py (which names the cropped fixture tokenizer's pre-tokenizer).
#
# Pairs (nibble variant : llama.cpp file):
#   nf4  (NF4 + double quant, bf16 head)  : Q4_0 with a bf16 head (like for like), Q4_0 default
#   int8 (LLM.int8, threshold 6.0)        : Q8_0
#   stored (bf16)                         : BF16
# nibble: decode = greedy steps after a 16-token prompt, prefill = forward of 512 ids with the
# last row's logits only; llama-bench: tg$TG (default 64) from an empty cache and pp512 (last
# logits). Also TinyStories-656K (../shared/models; f32, so nibble's NF4 computes in f32) against
# its Q4_0 at 1 and 2 threads: decode of 256 tokens (llama-bench tg256).
# The decode floor: nibble's measured read bandwidth (model_cpu) over the bytes a token reads
# (nibble's footprint; llama.cpp's file size minus the embedding rows it does not read).
#
#   LLAMA_BIN=/work/peer/build/bin PY=/work/peer/venv/bin/python \
#   CONVERT=.../vendor/llama.cpp/convert_hf_to_gguf.py bench/vs_llamacpp.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BIN=${LLAMA_BIN:-/work/peer/build/bin}
PY=${PY:-/work/peer/venv/bin/python}
CONVERT=${CONVERT:-/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py}
WORK=${WORK:-/tmp/nibble_vs_llamacpp}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
TG=${TG:-64}
NIBBLE=${NIBBLE:-build/default/bin/model_cpu}
VARIANTS=${VARIANTS:-nf4,int8,stored}
LLAMA_MODELS=${LLAMA_MODELS:-q4_0_bf16head q4_0 q8_0 bf16}
OUT=${1:-bench/results/vs_llamacpp_xeon2c.json}
TOK=${TOK:-../shared/fixtures/tokenizers/meta-llama-3-8b-instruct}

mkdir -p "$WORK"
if [ ! -f "$WORK/hf/model.safetensors" ]; then
  "$NIBBLE" --write-llama1b "$WORK/hf"
  cp "$TOK/tokenizer.json" "$TOK/tokenizer_config.json" "$WORK/hf/"
fi
if [ ! -f "$WORK/bf16.gguf" ]; then
  "$PY" bench/llamacpp_convert.py "$CONVERT" "$WORK/hf" --outtype bf16 --outfile "$WORK/bf16.gguf"
fi
quant() {  # name type [extra flags]
  local name=$1 type=$2
  shift 2
  [ -f "$WORK/$name.gguf" ] || "$LLAMA_BIN/llama-quantize" "$@" "$WORK/bf16.gguf" "$WORK/$name.gguf" "$type" "$THREADS"
}
quant q4_0 Q4_0
quant q4_0_bf16head Q4_0 --token-embedding-type bf16 --output-tensor-type bf16
quant q8_0 Q8_0
TS=${TS:-../shared/models/tinystories-656k}
mkdir -p "$WORK/ts"
. bench/tinystories_gguf.sh
tinystories_gguf

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r: nibble ($VARIANTS), load $(loadavg)"
  "$NIBBLE" --model "$WORK/hf" --no-tinystories --no-breakdown --variants "$VARIANTS" --threads "$THREADS" \
    --prefill 16,512 --decode 32 --prefill-last --json "$WORK/nibble_r$r.json" > "$WORK/nibble_r$r.log"
  for t in 1 "$THREADS"; do
    echo "round $r: tinystories at $t threads, load $(loadavg)"
    "$NIBBLE" --tinystories "$TS" --no-breakdown --variants nf4 --threads "$t" --prefill 16 --decode 256 \
      --json "$WORK/ts_nibble_t${t}_r$r.json" > "$WORK/ts_nibble_t${t}_r$r.log"
    "$LLAMA_BIN/llama-bench" -m "$WORK/ts/q4_0.gguf" -t "$t" -p 0 -n 256 -r 1 -o json \
      > "$WORK/ts_llama_t${t}_r$r.json" 2> "$WORK/ts_llama_t${t}_r$r.log"
  done
  for m in $LLAMA_MODELS; do
    echo "round $r: llama.cpp $m, load $(loadavg)"
    "$LLAMA_BIN/llama-bench" -m "$WORK/$m.gguf" -t "$THREADS" -p 512 -n "$TG" -r 1 -o json \
      > "$WORK/llama_${m}_r$r.json" 2> "$WORK/llama_${m}_r$r.log"
  done
done

python3 - "$WORK" "$ROUNDS" "$OUT" "$THREADS" <<'PY'
import json, statistics, sys, subprocess, os
work, rounds, out, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
med = statistics.median
nib, lcp = {}, {}
loads = []
for r in range(1, rounds + 1):
    d = json.load(open(f"{work}/nibble_r{r}.json"))
    loads += [d["loadavg_start"], d["loadavg_end"]]
    machine = d["machine"]
    for v, res in d["results"][0]["variants"].items():
        if "error" in res: continue
        pf = [p for p in res["prefill"] if p["tokens"] == 512][0]
        nib.setdefault(v, {"decode": [], "prefill512": []})
        nib[v]["decode"].append(res["decode"]["tokens_per_s"])
        nib[v]["prefill512"].append(pf["tokens_per_s"])
    for f in os.listdir(work):
        if f.startswith("llama_") and f.endswith(f"_r{r}.json"):
            m = f[len("llama_"):-len(f"_r{r}.json")]
            try: rows = json.load(open(f"{work}/{f}"))
            except Exception: continue
            for row in rows:
                key = "prefill512" if row["n_prompt"] > 0 else "decode"
                lcp.setdefault(m, {"decode": [], "prefill512": []})[key].append(row["avg_ts"])
ts = {}
for r in range(1, rounds + 1):
    for t in sorted({1, threads}):
        d = json.load(open(f"{work}/ts_nibble_t{t}_r{r}.json"))
        ts.setdefault(f"nibble_nf4_t{t}", []).append(d["results"][0]["variants"]["nf4"]["decode"]["tokens_per_s"])
        rows_ = json.load(open(f"{work}/ts_llama_t{t}_r{r}.json"))
        ts.setdefault(f"llama_q4_0_t{t}", []).append([x["avg_ts"] for x in rows_ if x["n_gen"] > 0][0])
tsm = {k: med(v) for k, v in ts.items()}
gbps = med([json.load(open(f"{work}/nibble_r{r}.json"))["read_gbps"] for r in range(1, rounds + 1)])
fp_mib = {v: json.load(open(f"{work}/nibble_r1.json"))["results"][0]["variants"][v]["footprint_mib"] for v in nib}
nm = {v: {k: med(x) for k, x in d.items() if x} for v, d in nib.items()}
lm = {m: {k: med(x) for k, x in d.items() if x} for m, d in lcp.items()}
pairs = [("nf4", "q4_0_bf16head"), ("nf4", "q4_0"), ("int8", "q8_0"), ("stored", "bf16")]
rows = []
print(f"\n{threads} threads, medians of {rounds} interleaved rounds; load averages seen {min(l[0] for l in loads):.2f}..{max(l[0] for l in loads):.2f}")
print(f"{'nibble':8} {'llama.cpp':15} {'decode tok/s':>22} {'ratio':>6} {'prefill-512 tok/s':>24} {'ratio':>6}")
for v, m in pairs:
    if v not in nm or m not in lm: continue
    a, b = nm[v], lm[m]
    rd = a["decode"] / b["decode"]; rp = a["prefill512"] / b["prefill512"]
    print(f"{v:8} {m:15} {a['decode']:10.2f} vs {b['decode']:8.2f} {rd:6.2f} {a['prefill512']:11.1f} vs {b['prefill512']:9.1f} {rp:6.2f}")
    floor = gbps * 1e9 / (fp_mib[v] * 1048576.0)
    rows.append({"nibble": v, "llama_cpp": m, "nibble_decode_tps": a["decode"], "llama_decode_tps": b["decode"],
                 "nibble_bytes_per_token": fp_mib[v] * 1048576.0, "decode_floor_tps": floor,
                 "nibble_decode_of_floor": a["decode"] / floor,
                 "decode_ratio": rd, "nibble_prefill512_tps": a["prefill512"], "llama_prefill512_tps": b["prefill512"],
                 "prefill_ratio": rp})
print(f"decode floors at {gbps:.1f} GB/s read: " + ", ".join(
    f"{v} {gbps * 1e9 / (fp_mib[v] * 1048576.0):.1f} tok/s ({nm[v]['decode'] / (gbps * 1e9 / (fp_mib[v] * 1048576.0)):.0%} reached)"
    for v in nm))
for t in sorted({1, threads}):
    a, b = tsm[f"nibble_nf4_t{t}"], tsm[f"llama_q4_0_t{t}"]
    print(f"tinystories decode, {t} thread(s): nibble nf4 {a:.0f} tok/s vs llama.cpp Q4_0 {b:.0f}: {a / b:.2f}")
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    commit = ""
res = {"bench": "vs_llamacpp", "machine": machine, "threads": threads, "rounds": rounds, "nibble_commit": commit,
       "loadavg_seen": loads, "nibble": {v: {"runs": nib[v], "median": nm[v]} for v in nib},
       "llama_cpp": {m: {"runs": lcp[m], "median": lm[m]} for m in lcp}, "pairs": rows,
       "read_gbps": gbps, "tinystories_decode": {"runs": ts, "median": tsm},
       "notes": "llama.cpp ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36), built -DGGML_NATIVE=OFF "
                "with AVX512/VBMI/VNNI/BF16 on and AMX off; llama-bench -p 512 -n TG -r 1 per round. nibble: "
                "model_cpu --prefill 16,512 --decode 32 --prefill-last (decode after a 16-token prompt)."}
json.dump(res, open(out, "w"), indent=2)
print("wrote", out)
PY
