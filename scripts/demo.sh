#!/bin/sh
# Sets up, builds, and runs the main job on the bundled default model: TinyStories-656K
# quantized to NF4 with double quantization while loading, then a story generated greedily
# from "Once upon a time" (120 new tokens), streamed to stdout.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
cmake --preset default >/dev/null
cmake --build --preset default --target nibble_cli
MODEL=${1:-../shared/models/tinystories-656k}
./build/default/bin/nibble generate "$MODEL" -p "Once upon a time" --max-new-tokens 120 \
  --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant
