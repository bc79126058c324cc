"""GPU machine: peft 0.21 + transformers + bitsandbytes load the adapter nibble trained
(.devcarry/qlora/nibble_adapter, made by dev/gpu_proof/qlora_prepare.sh) on the NF4 + double-quant
llama fixture and give peft's own lora_final logits (nibble's 8 steps equal peft's; its
forward with lora_final gives those logits within 1e-4, tests/golden/test_qlora.cpp).
Prints max |diff| / max |ref| for nibble's adapter and, as the yardstick, for peft's lora_final.

Usage: python dev/gpu_proof/qlora_check.py [.devcarry/qlora]
"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

Q = sys.argv[1] if len(sys.argv) > 1 else ".devcarry/qlora"
ref = load_file(f"{Q}/reference.safetensors")
x = ref["input_ids"].cuda()
want = ref["lora_final.logits"].float()
res = {}
for name in ("nibble_adapter", "lora_final"):
    base = AutoModelForCausalLM.from_pretrained(f"{Q}/nf4_dq", dtype=torch.float32, attn_implementation="eager",
                                                device_map="cuda")
    model = PeftModel.from_pretrained(base, f"{Q}/{name}")
    with torch.no_grad():
        got = model(x).logits.float().cpu()
    res[name] = float((got - want).abs().max() / want.abs().max())
print(json.dumps(res))
sys.exit(0 if res["nibble_adapter"] < 1e-4 else 1)
