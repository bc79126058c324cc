#!/usr/bin/env bash
# CUDA quantization backend: build here, run on the GPU machine (which lacks the gtest,
# benchmark and JSON dev packages, so it only runs what was built here).
#   dev/cuda_run.sh build    here: configure + build test_cuda and quant_gpu (static cudart),
#                            the torch-mean checker, and stage fixtures into .devcarry/
#   dev/cuda_run.sh device [profile]   on the GPU machine, from the repo root: CUDA tests, torch-mean
#                            check against real torch, quantization benchmark; logs to $OUT;
#                            `profile` adds the hot kernels' SASS and an Nsight Compute pass
# Carry: build/cuda/tests/test_cuda build/cuda/bin/quant_gpu .devcarry
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  build)
    set -e
    # CMake 3.25 knows no CUDA20 dialect flag for nvcc; nvcc 13 accepts -std=c++20.
    cmake -S . -B build/cuda -G Ninja -DNIBBLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES='80;90' -DNIBBLE_WERROR=ON \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
      -DCMAKE_CUDA20_STANDARD_COMPILE_OPTION=-std=c++20 -DCMAKE_CUDA20_EXTENSION_COMPILE_OPTION=-std=c++20
    cmake --build build/cuda --target test_cuda quant_gpu
    mkdir -p .devcarry/fixtures
    rm -rf .devcarry/fixtures/bnb && cp -r ../shared/fixtures/bnb .devcarry/fixtures/bnb
    g++ -std=c++20 -O2 -ffp-contract=off -Wall -Wextra -Isrc dev/torch_mean_check.cpp -o .devcarry/torch_mean_check
    ldd build/cuda/tests/test_cuda build/cuda/bin/quant_gpu | grep -v -E 'linux-vdso|ld-linux|lib(c|m|gcc_s|stdc\+\+|pthread|dl|rt)\.so' || true
    du -shc build/cuda/tests/test_cuda build/cuda/bin/quant_gpu .devcarry
    ;;
  device)
    OUT="${OUT:-/tmp/out}"
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
    export NIBBLE_FIXTURES="$PWD/.devcarry/fixtures"
    rc=0
    echo "== test_cuda"
    ./build/cuda/tests/test_cuda 2>&1 | tee "$OUT/test_cuda.log" | grep -E '^\[( +OK|  FAILED|  PASSED|  SKIPPED) |seed|Failure|error|got 0x' | head -60
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    echo "== torch mean"
    PYTHONUNBUFFERED=1 python3 dev/torch_mean_dump.py /tmp/torch_mean && ./.devcarry/torch_mean_check /tmp/torch_mean 2>&1 | tee "$OUT/torch_mean.log" || rc=1
    echo "== bench"
    ./build/cuda/bin/quant_gpu --json "$OUT/quant_gpu.json" 2>&1 | tee "$OUT/bench.log" || rc=1
    if [ "${2:-}" = profile ]; then
      echo "== sass + ncu"
      # the hot kernels' SASS (bf16 input/output, blocksize 64, NF4) and their opcode histograms
      cuobjdump -sass -arch sm_90 build/cuda/bin/quant_gpu > /tmp/all.sass 2>/dev/null
      for k in quantize_4bit_kernelINS0_3dev4BF16ELi64ELb1E dequantize_4bit_kernelINS0_3dev4BF16E; do
        awk -v k="$k" '/Function :/ {p = index($0, k) > 0 && index($0, "de" k) == 0} p' /tmp/all.sass > "$OUT/sass_${k:0:12}.txt"
        echo "-- $k: $(grep -cE '^ +/\*[0-9a-f]{4}\*/' "$OUT/sass_${k:0:12}.txt") instructions"
        grep -oE '^ +/\*[0-9a-f]{4}\*/ +(@!?U?P[0-9T] +)?[A-Z0-9_]+' "$OUT/sass_${k:0:12}.txt" | awk '{print $NF}' |
          sort | uniq -c | sort -rn | head -16 | tr '\n' ' '
        echo
      done
      if command -v ncu >/dev/null; then
        timeout 240 ncu --clock-control none -k 'regex:quantize_4bit_kernel' -c 4 --section SpeedOfLight \
          --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy \
          ./build/cuda/bin/quant_gpu --reps 5 > "$OUT/ncu.txt" 2>&1
        grep -E 'quantize_4bit_kernel|Duration|Throughput|Busy|Achieved Occupancy|Executed Ipc|Issue Slots' "$OUT/ncu.txt" | head -60
      fi
    fi
    exit $rc
    ;;
  infer-build)
    # here: the inference binaries (CUDA tests, GEMV and model benchmarks), stripped, and the
    # fixtures they read staged into .devcarry/shared (the tests find it as ../shared there)
    set -e
    cmake -S . -B build/cuda -G Ninja -DNIBBLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES='90' -DNIBBLE_WERROR=ON \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
      -DCMAKE_CUDA20_STANDARD_COMPILE_OPTION=-std=c++20
    cmake --build build/cuda --target test_cuda linear_gpu model_gpu train_gpu nibble_cli
    mkdir -p .devcarry/bin .devcarry/shared/fixtures .devcarry/shared/models
    for b in tests/test_cuda bin/linear_gpu bin/model_gpu bin/train_gpu bin/nibble; do
      [ -f build/cuda/$b ] && strip -o .devcarry/bin/$(basename $b) build/cuda/$b
    done
    for f in bnb models tinystories configs; do
      rm -rf .devcarry/shared/fixtures/$f && cp -r ../shared/fixtures/$f .devcarry/shared/fixtures/
    done
    rm -rf .devcarry/shared/models/tinystories-656k && cp -r ../shared/models/tinystories-656k .devcarry/shared/models/
    du -shc .devcarry/*
    ;;
  infer)
    # there: CUDA tests (skip with "tests"), the GEMV table and the model benchmark; logs to $OUT.
    # "train": the QLoRA step benchmark (TRAIN_SHAPES); "train-profile": its kernels by ncu;
    # "gemv-profile": the decode GEMV's launches of one layer under ncu with stall reasons;
    # "tests-optin", "attn-ab", "gemv-ks": the decode attention's other forms' tests and A/B, the GEMV's K slices
    OUT="${OUT:-/tmp/out}"
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
    # the binaries were built against /work/main: give them ../shared where they look for it
    mkdir -p /work && { [ -e /work/shared ] || ln -s "$PWD/.devcarry/shared" /work/shared; }
    export NIBBLE_FIXTURES="$PWD/.devcarry/shared/fixtures"
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__path__[0]) + "/cublas/lib")' 2>/dev/null):${LD_LIBRARY_PATH:-}"
    rc=0
    shift
    [ $# -gt 0 ] || set -- tests gemv model
    TRAIN_SHAPES="${TRAIN_SHAPES:-llama32_1b,llama2_7b}"
    for what in "$@"; do
      case "$what" in
        tests) ./.devcarry/bin/test_cuda 2>&1 | tee "$OUT/test_cuda.log" |
                 grep -E '^\[( +OK|  FAILED|  PASSED|  SKIPPED) |seed|Failure|error' | head -80
               [ "${PIPESTATUS[0]}" = 0 ] || rc=1 ;;
        gemv) ./.devcarry/bin/linear_gpu ${GEMV_ARGS:-} --json "$OUT/linear_gpu.json" 2>&1 | tee "$OUT/linear_gpu.log" || rc=1 ;;
        model) ./.devcarry/bin/model_gpu --shapes "${SHAPES:-llama2_7b}" --dir /tmp/models --keep \
                 --json "$OUT/model_gpu.json" 2>&1 | tee "$OUT/model_gpu.log" || rc=1 ;;
        train) ./.devcarry/bin/train_gpu --shapes "${TRAIN_SHAPES:-llama32_1b,llama2_7b}" --steps 3 \
                 --checkpointing both --dir /tmp/train_models --json "$OUT/train_gpu.json" 2>&1 |
                 tee "$OUT/train_gpu.log" | tail -6
               [ "${PIPESTATUS[0]}" = 0 ] || rc=1 ;;
        train-profile)  # one step's kernels under Nsight Compute, summed by name
          for shape in ${TRAIN_SHAPES//,/ }; do
            timeout 200 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv ./.devcarry/bin/train_gpu \
              --shapes "$shape" --steps 2 --checkpointing 0 --profile 1 --dir /tmp/train_models \
              > "$OUT/ncu_$shape.csv" 2> "$OUT/ncu_$shape.err" || rc=1
            python3 dev/ncu_sum.py "$OUT/ncu_$shape.csv" 30
          done ;;
        tests-optin)  # the decode attention's other forms (one key a warp, 4 keys) under the tests that take them
          for cfg in "NIBBLE_ATTN_KEYS=1" "NIBBLE_ATTN_KEYS=4"; do
            env $cfg ./.devcarry/bin/test_cuda --gtest_filter='NnCuda.*:ModelCuda.*:LinearCuda.*' > "$OUT/test_optin.log" 2>&1 || rc=1
            echo "== $cfg: $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/test_optin.log" | tr '\n' ' ')"
          done ;;
        attn-ab)  # decode with the many-key attention (the default) against one key and 4 keys a warp
          for cfg in "X=0" "NIBBLE_ATTN_KEYS=1" "NIBBLE_ATTN_KEYS=4" "X=1"; do
            env $cfg ./.devcarry/bin/model_gpu --shapes llama2_7b --batches 1,16 --contexts 128,4096 --dir /tmp/models \
              --keep > "$OUT/attn_ab.log" 2>&1 || rc=1
            echo "== $cfg: $(grep -E 'decode B=' "$OUT/attn_ab.log" | tr -s ' ' | cut -c1-40 | tr '\n' ' ')"
          done ;;
        gemv-ks)  # the GEMV table with the pipelined kernel's K slices forced (0: the cost model's choice)
          for ks in 0 1 2 4 8 16; do
            NIBBLE_GEMV4_KS=$ks ./.devcarry/bin/linear_gpu --quick --reps 100 > "$OUT/gemv_ks$ks.log" 2>&1 || rc=1
            echo "== ks $ks"; grep -E "gemv_4bit +nf4_dq +1 " "$OUT/gemv_ks$ks.log"
          done ;;
        gemv-profile)  # one decode layer's four 4-bit GEMV launches (B=1) with stall reasons and per-instruction counters
          timeout 200 ncu --profile-from-start off -k regex:gemv_pipe --launch-count 4 --section SpeedOfLight \
            --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section Occupancy \
            --section LaunchStats --section InstructionStats --section SourceCounters -o "$OUT/gemv" \
            ./.devcarry/bin/model_gpu --shapes llama2_7b --batches 1 --contexts 128 --dir /tmp/models --keep \
            --profile-decode 1 > "$OUT/gemv_ncu_run.log" 2>&1 || rc=1
          ncu --import "$OUT/gemv.ncu-rep" --page details > "$OUT/gemv_details.log" 2>&1
          ncu --import "$OUT/gemv.ncu-rep" --page source --csv --print-source sass > "$OUT/gemv_source.log" 2>&1
          rm -f "$OUT/gemv.ncu-rep"
          grep -E "Duration|DRAM Throughput|Eligible|Issued Warp|Achieved Occupancy|No Eligible" "$OUT/gemv_details.log" |
            head -40 ;;
      esac
    done
    exit $rc
    ;;
  *)
    echo "usage: dev/cuda_run.sh build|device|infer-build|infer [tests] [tests-optin] [gemv] [gemv-ks] [model] [attn-ab] [train] [train-profile] [gemv-profile]" >&2
    exit 2
    ;;
esac
