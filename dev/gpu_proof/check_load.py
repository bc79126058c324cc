"""On the GPU machine: transformers + bitsandbytes load the folders nibble saved, and give the
logits transformers itself gave for the same quantization (the fixtures' reference.safetensors).

usage: python3 check_load.py SAVED_ROOT FIXTURES_ROOT OUT_JSON
SAVED_ROOT/<model>/<variant>/ are `nibble quantize` outputs of FIXTURES_ROOT/models/<model>/fp32.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

saved, fixtures, out_path = sys.argv[1:4]
results = []
for model in sorted(os.listdir(saved)):
    for variant in sorted(os.listdir(os.path.join(saved, model))):
        path = os.path.join(saved, model, variant)
        entry = {"model": model, "variant": variant}
        try:
            m = AutoModelForCausalLM.from_pretrained(path, device_map="cuda", attn_implementation="eager")
            m.eval()
            classes = sorted({type(mod).__name__ for mod in m.modules() if "Linear" in type(mod).__name__})
            if model == "tinystories":
                ref = json.load(open(os.path.join(fixtures, "tinystories", "reference.json")))[variant]["greedy"][0]
                ids = torch.tensor([ref["prompt_ids"]], device="cuda")
                gen = m.generate(ids, max_new_tokens=len(ref["ids"]) - len(ref["prompt_ids"]), do_sample=False)
                entry.update(greedy_equal=gen[0].tolist() == ref["ids"], classes=classes)
            else:
                ref = load_file(os.path.join(fixtures, "models", model, "reference.safetensors"))
                with torch.no_grad():
                    logits = m(ref["input_ids"].cuda()).logits.float().cpu()
                want = ref[f"{variant}.logits"]
                entry.update(max_abs_diff=float((logits - want).abs().max()), max_abs_logit=float(want.abs().max()),
                             classes=classes)
        except Exception as e:  # noqa: BLE001
            entry["error"] = repr(e)[:300]
        print(json.dumps(entry), flush=True)
        results.append(entry)
json.dump(results, open(out_path, "w"), indent=1)
