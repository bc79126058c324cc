#!/usr/bin/env bash
# GPU machine: build bitsandbytes from source (carried in .devcarry/bnb), then
#  1. transformers + bitsandbytes load the folders `nibble quantize` saved (.devcarry/saved)
#     and reproduce transformers' own logits (dev/gpu_proof/check_load.py);
#  2. make fixtures for the architectures that have none (refgen hf_models.py).
# Prepare here with dev/gpu_proof/prepare.sh; carry .devcarry.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/out}"
BNB=$PWD/.devcarry/bnb
( cd "$BNB" && cmake -S . -B build -DCOMPUTE_BACKEND=cuda -DCOMPUTE_CAPABILITY=90 -DCMAKE_BUILD_TYPE=Release >"$OUT/bnb_build.log" 2>&1 &&
  cmake --build build -j16 >>"$OUT/bnb_build.log" 2>&1 ) || { tail -30 "$OUT/bnb_build.log"; exit 1; }
ls "$BNB"/bitsandbytes/*.so
# transformers looks bitsandbytes up by its installed metadata
mkdir -p /tmp/site/bitsandbytes-0.50.2.dist-info
printf 'Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n' >/tmp/site/bitsandbytes-0.50.2.dist-info/METADATA
export PYTHONPATH=$BNB:/tmp/site
python3 -c "import bitsandbytes, transformers; print('bitsandbytes', bitsandbytes.__version__, 'transformers', transformers.__version__)"
PYTHONUNBUFFERED=1 python3 dev/gpu_proof/check_load.py .devcarry/saved .devcarry/fixtures "$OUT/check_load.json"
mkdir -p /tmp/newfix
PYTHONUNBUFFERED=1 python3 .devcarry/refgen/hf_models.py /tmp/newfix mistral qwen3 gemma2 llama3_rope 2>&1 | tail -20
tar -C /tmp/newfix -czf "$OUT/newfix.tar.gz" . && ls -la "$OUT"
