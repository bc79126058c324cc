#!/usr/bin/env bash
# nibble serve against llama.cpp's llama-server on this machine's CPU (issue 10 §4): the same
# streamed greedy /v1/completions load (bench/serve_load) at concurrency 1, 8, 32, sent to both
# servers in the same run, interleaved round by round, medians and ratios printed and written to
# a JSON file. llama.cpp is built outside the repository (never committed; see PEERS.md) and its
# GGUF files come from its own convert_hf_to_gguf.py through bench/llamacpp_convert.py, made
# exactly as bench/vs_llamacpp.sh makes them (the two scripts share WORK).
#
# Models (nibble : llama-server):
#   tinystories  TinyStories-656K f32 checkpoint, NF4 + double quant at load (f32 compute)
#                : its Q4_0 GGUF
#   llama1b      the random-weight Llama-3.2-1B-shape bf16 folder (bench/model_cpu --write-llama1b)
#                with its tokenizer's vocabulary filled up (hf_fullvocab, below), NF4 + double
#                quant at load (bf16 compute, bf16 head)
#                : Q4_0 with bf16 token embedding and output (like for like)
# Both servers: $THREADS compute threads, $PARALLEL sequences decoded at once (nibble --parallel,
# llama-server -np with -c $PARALLEL x $CTX_PER_SLOT), greedy (temperature 0), every request
# exactly $MAX_TOKENS tokens (ignore_eos; the usage counts both servers report are checked and
# the script fails when they differ from $MAX_TOKENS), no prompt reuse (cache_prompt false).
# nibble serve runs inside serve_load (one process per round: load + quantize, then the levels);
# llama-server runs once per model, idle while nibble runs. /proc/loadavg is recorded around each
# run (another build on this 2-core machine shows up there; runs that started above a quarter of
# the machine's logical cores, 0.5 here, are named).
# Requests per level are set per model (the 1B shape decodes ~15 tok/s at concurrency 1).
#
#   LLAMA_BIN=/work/peer/build/bin PY=/work/peer/venv/bin/python \
#   CONVERT=.../vendor/llama.cpp/convert_hf_to_gguf.py bench/serve_vs_llamaserver.sh [OUT.json]
#   On the GPU machine: DEVICE=cuda (nibble serve with --device-map cuda, llama-server with
#   LLAMA_GPU_ARGS, default "-ngl 99 -fa on": every layer on the GPU, flash attention on), with
#   both binaries built for CUDA (bench/serve_load from the NIBBLE_CUDA build).
#   env: ROUNDS=2 THREADS=2 PARALLEL=8 MAX_TOKENS=64 MODELS="tinystories llama1b" DEVICE=cpu
#        TS_LEVELS=1,8,32 TS_REQUESTS=128,256,256 L1B_LEVELS=1,8,32 L1B_REQUESTS=8,32,64 PORT=18080
#        RUN_TIMEOUT=1800 (seconds per serve_load run)
set -euo pipefail
cd "$(dirname "$0")/.."
die() {
  echo "serve_vs_llamaserver: $*" >&2
  exit 1
}
LLAMA_BIN=${LLAMA_BIN:-/work/peer/build/bin}
PY=${PY:-/work/peer/venv/bin/python}
CONVERT=${CONVERT:-/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py}
WORK=${WORK:-/tmp/nibble_vs_llamacpp}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PARALLEL=${PARALLEL:-8}
CTX_PER_SLOT=${CTX_PER_SLOT:-512}
MAX_TOKENS=${MAX_TOKENS:-64}
MODELS=${MODELS:-tinystories llama1b}
TS_LEVELS=${TS_LEVELS:-1,8,32}
TS_REQUESTS=${TS_REQUESTS:-128,256,256}
L1B_LEVELS=${L1B_LEVELS:-1,8,32}
L1B_REQUESTS=${L1B_REQUESTS:-8,32,64}
PORT=${PORT:-18080}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}  # seconds one serve_load run may take (a server under contention can crawl)
MACHINE=${MACHINE:-xeon2c}
DEVICE=${DEVICE:-cpu}
case $DEVICE in
  cpu) LLAMA_GPU_ARGS=() ;;
  cuda) read -r -a LLAMA_GPU_ARGS <<< "${LLAMA_GPU_ARGS:--ngl 99 -fa on}" ;;
  *) echo "serve_vs_llamaserver: DEVICE is cpu or cuda, not $DEVICE" >&2; exit 1 ;;
esac
NIBBLE=${NIBBLE:-build/default/bin/model_cpu}
SERVE_LOAD=${SERVE_LOAD:-build/default/bin/serve_load}
OUT=${1:-bench/results/serve_vs_llamaserver_xeon2c.json}
TOK=${TOK:-../shared/fixtures/tokenizers/meta-llama-3-8b-instruct}
TS=${TS:-../shared/models/tinystories-656k}

[ -x "$LLAMA_BIN/llama-server" ] ||
  die "no llama-server in LLAMA_BIN=$LLAMA_BIN: build llama.cpp's llama-server target outside the repository (PEERS.md) and set LLAMA_BIN to its bin folder"
[ -x "$LLAMA_BIN/llama-quantize" ] || die "no llama-quantize in LLAMA_BIN=$LLAMA_BIN"
[ -x "$PY" ] || die "PY=$PY is not a python: set PY to the venv that has llama.cpp's converter's packages"
for b in "$SERVE_LOAD" "$NIBBLE"; do
  [ -x "$b" ] || die "no $b: build nibble first (cmake --build build/default --target serve_load model_cpu)"
done
command -v curl > /dev/null || die "curl is needed to wait for llama-server's /health"

# Models, as bench/vs_llamacpp.sh makes them (nothing is downloaded).
mkdir -p "$WORK/ts"
case " $MODELS " in *" llama1b "*)
  if [ ! -f "$WORK/hf/model.safetensors" ]; then
    "$NIBBLE" --write-llama1b "$WORK/hf"
    cp "$TOK/tokenizer.json" "$TOK/tokenizer_config.json" "$WORK/hf/"
  fi
  # The fixtures' tokenizer is cropped to 2,003 of the config's 128,256 ids: a random model's
  # greedy tokens mostly fall outside it and decode to no text on either server, which leaves no
  # streamed events to time. hf_fullvocab is the same folder (the weights linked, not copied)
  # with the vocabulary filled up by placeholder tokens "Ġw<id>" (text " w<id>"; the ids that
  # tokenizer_config.json names as special tokens stay theirs), no merges, so prompts tokenize as
  # before and every generated token but those specials is text on both servers.
  if [ ! -f "$WORK/hf_fullvocab/tokenizer.json" ]; then
    mkdir -p "$WORK/hf_fullvocab"
    ln -sf "$WORK/hf/model.safetensors" "$WORK/hf_fullvocab/model.safetensors"
    cp "$WORK/hf/config.json" "$WORK/hf/tokenizer_config.json" "$WORK/hf_fullvocab/"
    python3 -c 'import json, sys
t = json.load(open(sys.argv[1] + "/tokenizer.json")); n = json.load(open(sys.argv[1] + "/config.json"))["vocab_size"]
c = json.load(open(sys.argv[1] + "/tokenizer_config.json")).get("added_tokens_decoder", {})
v = t["model"]["vocab"]; used = set(v.values()) | {a["id"] for a in t["added_tokens"]} | {int(i) for i in c}
for i in range(n):
    if i not in used:
        assert "\u0120w%d" % i not in v; v["\u0120w%d" % i] = i
json.dump(t, open(sys.argv[2] + "/tokenizer.json", "w"), ensure_ascii=False)' "$WORK/hf" "$WORK/hf_fullvocab"
  fi
  if [ ! -f "$WORK/fullvocab_q4_0_bf16head.gguf" ]; then
    [ -f "$CONVERT" ] || die "CONVERT=$CONVERT: no convert_hf_to_gguf.py there"
    [ -f "$WORK/fullvocab_bf16.gguf" ] || "$PY" bench/llamacpp_convert.py "$CONVERT" "$WORK/hf_fullvocab" \
      --outtype bf16 --outfile "$WORK/fullvocab_bf16.gguf"
    "$LLAMA_BIN/llama-quantize" --token-embedding-type bf16 --output-tensor-type bf16 \
      "$WORK/fullvocab_bf16.gguf" "$WORK/fullvocab_q4_0_bf16head.gguf" Q4_0 "$THREADS"
  fi
  ;;
esac
case " $MODELS " in *" tinystories "*)
    [ -f "$WORK/ts/f32.gguf" ] || [ -f "$CONVERT" ] || die "CONVERT=$CONVERT: no convert_hf_to_gguf.py there"
    . bench/tinystories_gguf.sh
    tinystories_gguf
  ;;
esac

RUN="$WORK/serve"
mkdir -p "$RUN"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
LPID=
stop_llama() {
  if [ -n "$LPID" ]; then
    kill "$LPID" 2> /dev/null || true
    wait "$LPID" 2> /dev/null || true
    LPID=
  fi
}
trap stop_llama EXIT
start_llama() {  # name gguf
  curl -s -o /dev/null "http://127.0.0.1:$PORT/health" && die "port $PORT is taken: set PORT"
  LLAMA_ARGS=(-m "$2" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -tb "$THREADS" -np "$PARALLEL"
    -c $((PARALLEL * CTX_PER_SLOT)) --temp 0 "${LLAMA_GPU_ARGS[@]}")
  "$LLAMA_BIN/llama-server" "${LLAMA_ARGS[@]}" > "$RUN/llama_server_$1.log" 2>&1 &
  LPID=$!
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] && return 0
    kill -0 "$LPID" 2> /dev/null || {
      tail -20 "$RUN/llama_server_$1.log" >&2
      die "llama-server exited while loading $2"
    }
    sleep 0.2
  done
  die "llama-server did not become healthy in 120 s (log: $RUN/llama_server_$1.log)"
}

for m in $MODELS; do
  case $m in
    tinystories) nib_model=$TS gguf=$WORK/ts/q4_0.gguf levels=$TS_LEVELS reqs=$TS_REQUESTS ;;
    llama1b) nib_model=$WORK/hf_fullvocab gguf=$WORK/fullvocab_q4_0_bf16head.gguf levels=$L1B_LEVELS reqs=$L1B_REQUESTS ;;
    *) die "unknown model $m (tinystories, llama1b)" ;;
  esac
  start_llama "$m" "$gguf"
  echo "$m: llama-server ${LLAMA_ARGS[*]}" > "$RUN/${m}_llama_args.txt"
  for r in $(seq 1 "$ROUNDS"); do
    echo "round $r: $m, nibble serve (in-process, $DEVICE), load $(loadavg)"
    timeout "$RUN_TIMEOUT" "$SERVE_LOAD" "$nib_model" --quant nf4 --threads "$THREADS" --parallel "$PARALLEL" \
      --device-map "$DEVICE" --concurrency "$levels" \
      --requests "$reqs" --max-tokens "$MAX_TOKENS" --machine "$MACHINE" \
      > "$RUN/${m}_nibble_r$r.json" 2> "$RUN/${m}_nibble_r$r.log" || die "serve_load (nibble) failed: $RUN/${m}_nibble_r$r.log"
    echo "round $r: $m, llama-server, load $(loadavg)"
    timeout "$RUN_TIMEOUT" "$SERVE_LOAD" --url "http://127.0.0.1:$PORT" --concurrency "$levels" --requests "$reqs" \
      --max-tokens "$MAX_TOKENS" --machine "$MACHINE" \
      > "$RUN/${m}_llama_r$r.json" 2> "$RUN/${m}_llama_r$r.log" || die "serve_load (llama-server) failed: $RUN/${m}_llama_r$r.log"
  done
  stop_llama
done
echo "done, load $(loadavg)"

LLAMA_VERSION=$("$LLAMA_BIN/llama-server" --version 2>&1 | grep -m1 version || true)
python3 - "$RUN" "$ROUNDS" "$OUT" "$THREADS" "$PARALLEL" "$MAX_TOKENS" "$LLAMA_VERSION" "$MODELS" "$WORK" "$TS" "$DEVICE" <<'PY'
import json, os, statistics, subprocess, sys
run, rounds, out, threads, parallel, max_tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
llama_version, models, work, ts, device = sys.argv[7], sys.argv[8].split(), sys.argv[9], sys.argv[10], sys.argv[11]
med = statistics.median
KEYS = ["requests_per_s", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms"]
files = {"tinystories": {"nibble": [os.path.join(ts, "model.safetensors")], "llama_server": [f"{work}/ts/q4_0.gguf"]},
         "llama1b": {"nibble": [f"{work}/hf_fullvocab (model.safetensors -> hf/model.safetensors)"],
                     "llama_server": [f"{work}/fullvocab_q4_0_bf16head.gguf"]}}
errors, busy, res_models, machine = [], [], {}, None
for m in models:
    sides = {}
    for side, tag in (("nibble", "nibble"), ("llama_server", "llama")):
        runs = []
        for r in range(1, rounds + 1):
            d = json.load(open(f"{run}/{m}_{tag}_r{r}.json"))
            machine = d["machine"]
            runs.append(d)
            for lv in d["levels"]:
                where = f"{m} {side} round {r} concurrency {lv['concurrency']}"
                if lv["failed"] or lv["requests_without_usage"]:
                    errors.append(f"{where}: {lv['failed']} failed, {lv['requests_without_usage']} without usage")
                if lv["completion_tokens_min"] != max_tokens or lv["completion_tokens_max"] != max_tokens:
                    errors.append(f"{where}: completion tokens {lv['completion_tokens_min']}..{lv['completion_tokens_max']}, "
                                  f"not {max_tokens} for every request")
                if lv["loadavg_start"][0] > 0.25 * d["machine"]["logical_cores"]:
                    busy.append(f"{where}: load {lv['loadavg_start'][0]:.2f} at its start")
        levels = {}
        for i, lv in enumerate(runs[0]["levels"]):
            per = [x["levels"][i] for x in runs]
            levels[str(lv["concurrency"])] = {
                "requests": lv["requests"], "prompt_tokens_per_request": lv["prompt_tokens"] / lv["requests"],
                "median": {k: med([p[k] for p in per]) for k in KEYS},
                "runs": {k: [p[k] for p in per] for k in KEYS + ["loadavg_start", "loadavg_end"]}}
        sides[side] = {"files": files[m][side], "levels": levels,
                       "load_s": [x["load_s"] for x in runs] if side == "nibble" else None}
    ratios = {}
    for c, a in sides["nibble"]["levels"].items():
        b = sides["llama_server"]["levels"][c]["median"]
        ratios[c] = {k: a["median"][k] / b[k] if b[k] else None for k in KEYS}
    res_models[m] = {**sides, "ratio_nibble_over_llama_server": ratios}
for e in errors:
    print("MISMATCH:", e, file=sys.stderr)
if errors:
    sys.exit("serve_vs_llamaserver: the servers did not generate the same tokens (above); no result written")

print(f"\n{device}: {threads} threads, {parallel} slots, {max_tokens} tokens per request, medians of {rounds} interleaved rounds")
print("ratio = nibble / llama-server (throughput: > 1 nibble faster; latency: < 1 nibble faster)")
print(f"{'model':12} {'C':>3} {'req/s nib/llama':>18} {'tok/s nib / llama':>22} {'ratio':>6} "
      f"{'TTFT p50 ms':>18} {'TPOT p50 ms':>16} {'TPOT p99 ms':>16}")
for m, d in res_models.items():
    for c in d["nibble"]["levels"]:
        a, b = d["nibble"]["levels"][c]["median"], d["llama_server"]["levels"][c]["median"]
        print(f"{m:12} {c:>3} {a['requests_per_s']:8.2f}/{b['requests_per_s']:<8.2f} {a['tokens_per_s']:10.1f} / {b['tokens_per_s']:<9.1f}"
              f" {a['tokens_per_s'] / b['tokens_per_s']:6.2f} {a['ttft_p50_ms']:8.1f}/{b['ttft_p50_ms']:<8.1f}"
              f" {a['tpot_p50_ms']:7.2f}/{b['tpot_p50_ms']:<7.2f} {a['tpot_p99_ms']:7.2f}/{b['tpot_p99_ms']:<7.2f}")
for b in busy:
    print("busy:", b)
def git(*a):
    try:
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
    except OSError:  # no git where it runs (the GPU machine's copy of the tree)
        return ""
commit = os.environ.get("NIBBLE_COMMIT") or git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
args = {m: open(f"{run}/{m}_llama_args.txt").read().strip() for m in models}
res = {"bench": "serve_vs_llamaserver", "machine": machine, "device": device, "threads": threads, "parallel": parallel,
       "max_tokens": max_tokens, "rounds": rounds, "nibble_commit": commit, "llama_cpp": llama_version,
       "llama_server_command": args, "busy_runs": busy, "models": res_models,
       "notes": "serve_load (bench/serve_load.cpp): streamed greedy /v1/completions with usage, ignore_eos and "
                "cache_prompt false; each level sends its requests from C clients at once. nibble serve in-process "
                "(NF4 + double quant at load, --parallel as above, compute threads as above, on the device above); llama-server "
                "built outside the repository from llama.cpp as vendored in llama-cpp-python 0.3.36 (ggml-org/llama.cpp@0c1e57098), "
                + ("-DGGML_NATIVE=OFF with AVX512/VBMI/VNNI/BF16 on and AMX off" if device == "cpu" else
                   "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90, every layer on the GPU, flash attention on") + ". TTFT includes the wait for a slot "
                "(C = 32 > slots). TPOT: a request's first-to-last text event time over its completion tokens - 1."}
json.dump(res, open(out, "w"), indent=2)
print("wrote", out)
PY
