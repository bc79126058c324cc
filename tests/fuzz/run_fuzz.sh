#!/usr/bin/env bash
# Builds the `fuzz` preset and runs libFuzzer harnesses with issue 12's limits: ASan + UBSan,
# leak detection, 1 s per input, 2 GB of RSS and no single allocation over 2 GB.
#
#   tests/fuzz/run_fuzz.sh [-t SECONDS] [-j JOBS] [-n] [HARNESS ... | all]
#     -t  seconds per harness (default 600)       -j  harnesses at once (default 2)
#     -n  do not build first                      HARNESS: a name of tests/fuzz/CMakeLists.txt
#
# Corpora, logs and crash artifacts go to $NIBBLE_FUZZ_OUT (default build/fuzz-runs, git-ignored):
# <out>/<harness>/corpus (new inputs; the committed seeds and regressions are read, never
# written), <out>/<harness>/fuzz.log, <out>/<harness>/crash-* | leak-* | timeout-* | oom-*.
# Ends with a table: harness, seconds, execs, edges (cov:), features (ft:), findings.
# Run it on an otherwise idle machine: libFuzzer's 1 s timeout is wall-clock time, so a build
# running beside it turns slow-scheduled inputs into false timeouts (replay them to check).
set -eu
cd "$(dirname "$0")/../.."
seconds=600
jobs=2
build=1
while getopts t:j:n opt; do
  case $opt in
    t) seconds=$OPTARG ;;
    j) jobs=$OPTARG ;;
    n) build=0 ;;
    *) sed -n 2,12p "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
all=$(sed -n '/^set(NIBBLE_FUZZ_HARNESSES/,/)/p' tests/fuzz/CMakeLists.txt | tr -d '()' |
  sed 's/setNIBBLE_FUZZ_HARNESSES//' | tr -s ' \n' '\n' | grep -v '^$')
if [ $# -eq 0 ] || [ "$1" = all ]; then set -- $all; fi
for h in "$@"; do
  echo "$all" | grep -qx "$h" || { echo "run_fuzz.sh: no harness '$h' (have: $(echo $all))" >&2; exit 2; }
done

if [ $build = 1 ]; then
  cmake --preset fuzz >/dev/null
  nice -n 10 cmake --build --preset fuzz -j2
fi
out=${NIBBLE_FUZZ_OUT:-build/fuzz-runs}
mkdir -p "$out"

# The dictionary of a harness: the grammars its input is written in, in one file (libFuzzer
# takes one -dict).
dict_for() {
  d=tests/fuzz/dict
  case $1 in
    chat_template) cat $d/jinja.dict $d/json.dict $d/fields.dict ;;
    tokenizer_json) cat $d/json.dict $d/tokenizer.dict ;;
    tokenizer_text) cat $d/tokenizer.dict ;;
    http_request) cat $d/http.dict ;;
    *) cat $d/json.dict $d/fields.dict ;;
  esac
}

run_one() {
  h=$1
  dir=$out/$h
  mkdir -p "$dir/corpus"
  rm -f "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-* "$dir"/slow-unit-*
  dict_for "$h" >"$dir/dict"
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    nice -n 10 build/fuzz/tests/fuzz/fuzz_"$h" "$dir/corpus" tests/fuzz/seeds/"$h" tests/fuzz/regressions/"$h" \
    -dict="$dir/dict" -max_total_time="$seconds" -timeout=1 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$dir/" >"$dir/fuzz.log" 2>&1 || true
}

summary() {
  printf '%-20s %8s %12s %8s %8s  %s\n' harness seconds execs cov ft findings
  for h in "$@"; do
    log=$out/$h/fuzz.log
    last=$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(grep -E 'Done [0-9]+ runs in [0-9]+ second' "$log" | sed 's/.* in \([0-9]*\) second.*/\1/' | tail -1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    found=$(cd "$out/$h" && ls crash-* leak-* timeout-* oom-* 2>/dev/null | tr '\n' ' ')
    printf '%-20s %8s %12s %8s %8s  %s\n' "$h" "${secs:-?}" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${found:-none}"
  done
}

# At most $jobs harnesses at a time (this machine has 2 shared cores).
set -- "$@"
pending="$*"
running=0
for h in $pending; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  echo "fuzzing $h for ${seconds}s -> $out/$h/fuzz.log"
  run_one "$h" &
  running=$((running + 1))
done
wait
summary $pending
