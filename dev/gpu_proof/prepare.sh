#!/usr/bin/env bash
# Here: stage what dev/gpu_proof/run.sh needs under .devcarry (git-ignored): the bitsandbytes
# source from the fetched mirror, `nibble quantize` outputs of every fixture model, fixtures
# and the refgen scripts.
set -euo pipefail
cd "$(dirname "$0")/../.."
NIBBLE=${NIBBLE:-build/default/bin/nibble}
MIRROR=${BNB_MIRROR:-/work/.mirror/bitsandbytes-foundation+bitsandbytes/repo}
rm -rf .devcarry/bnb .devcarry/saved .devcarry/refgen && mkdir -p .devcarry/bnb .devcarry/saved .devcarry/fixtures
git --git-dir="$MIRROR" archive HEAD | tar -x -C .devcarry/bnb
cp -r ../shared/tools/refgen .devcarry/refgen
rm -rf .devcarry/fixtures/models .devcarry/fixtures/tinystories
cp -r ../shared/fixtures/tinystories .devcarry/fixtures/
mkdir -p .devcarry/fixtures/models
for d in ../shared/fixtures/models/*/; do
  m=$(basename "$d")
  mkdir -p .devcarry/fixtures/models/$m && cp "$d/reference.safetensors" "$d/reference.json" .devcarry/fixtures/models/$m/
  $NIBBLE quantize "$d/fp32" .devcarry/saved/$m/nf4_dq --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant --bnb-4bit-compute-dtype float32
  $NIBBLE quantize "$d/fp32" .devcarry/saved/$m/fp4 --load-in-4bit --bnb-4bit-quant-type fp4 --bnb-4bit-compute-dtype float32
  $NIBBLE quantize "$d/fp32" .devcarry/saved/$m/int8 --load-in-8bit
done
$NIBBLE quantize ../shared/models/tinystories-656k .devcarry/saved/tinystories/nf4_dq --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant
du -sh .devcarry/*
