#!/usr/bin/env bash
# Here: stage what dev/gpu_proof/qlora_check.py needs under .devcarry/qlora (git-ignored): an
# adapter nibble trained from the fixtures' lora_init (the peft run of fixtures/README.md from
# the command line: 8 constant-LR AdamW steps on the two reference sequences), the llama
# fixture folders it refers to, and the reference tensors.
set -euo pipefail
cd "$(dirname "$0")/../.."
NIBBLE=${NIBBLE:-build/default/bin/nibble}
L=../shared/fixtures/models/llama
Q=.devcarry/qlora
rm -rf "$Q" && mkdir -p "$Q"
cp -r "$L/nf4_dq" "$L/lora_init" "$L/lora_final" "$L/reference.safetensors" "$L/reference.json" "$Q/"
python3 - "$L/reference.safetensors" > "$Q/ref.jsonl" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); base = 8 + n
e = h["input_ids"]; f.seek(base + e["data_offsets"][0]); raw = f.read(e["data_offsets"][1] - e["data_offsets"][0])
v = list(struct.unpack("<%dq" % (len(raw) // 8), raw)); T = e["shape"][1]
for r in range(e["shape"][0]): print(json.dumps({"input_ids": v[r * T:(r + 1) * T]}))
PY
$NIBBLE finetune "$Q/nf4_dq" --data "$Q/ref.jsonl" --adapter "$Q/lora_init" --output-dir "$Q/nibble_adapter" \
  --max-steps 8 --learning-rate 1e-3 --lr-scheduler-type constant --max-grad-norm 0 --weight-decay 0 \
  --per-device-train-batch-size 2 --logging-steps 1
du -sh "$Q"
