"""Draws absmax-like float32 vectors on the GPU, takes torch's own t.mean(), and saves inputs
and results for dev/torch_mean_check.cpp, which replays quant::torch_cuda_mean_f32 on them.
Run on the GPU machine: python3 dev/torch_mean_dump.py DIR"""
import os
import sys

import torch

SIZES = [1, 2, 3, 5, 127, 128, 129, 1000, 4096, 65536, 130560, 130561, 262144, 1000003, 2000000, 16777216]

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
sms = torch.cuda.get_device_properties(0).multi_processor_count
with open(os.path.join(out, "manifest.txt"), "w") as f:
    for n in SIZES:
        g = torch.Generator(device="cuda").manual_seed(1234 + n)
        t = torch.randn(n, device="cuda", generator=g).abs()  # absmax-like: |normal|, float32
        assert t.data_ptr() % 16 == 0
        m = t.mean()
        bits = m.view(torch.int32).item() & 0xFFFFFFFF
        t.cpu().numpy().tofile(os.path.join(out, f"x_{n}.f32"))
        f.write(f"{n} {bits:08x} {sms} {torch.__version__}\n")
print(f"wrote {len(SIZES)} vectors to {out} (torch {torch.__version__}, {sms} SMs)")
