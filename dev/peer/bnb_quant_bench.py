"""On the GPU machine: the peer's side of bench/quant_gpu — bitsandbytes' quantize_4bit /
dequantize_4bit on the same bf16 shapes, timed the same way (CUDA events around back-to-back
runs, median, inputs rotated among 4 so L2 cannot hold them), next to the device-to-device copy
bandwidth measured in the same run.

usage: PYTHONPATH=<bitsandbytes source with its built .so> python3 bnb_quant_bench.py OUT_JSON
"""
import json
import sys

import torch
import bitsandbytes.functional as F


def median_us(fn, reps=100, warm=5):
    for i in range(warm):
        fn(i)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    ev[0].record()
    for r in range(reps):
        fn(r)
        ev[r + 1].record()
    torch.cuda.synchronize()
    t = sorted(ev[r].elapsed_time(ev[r + 1]) * 1e3 for r in range(reps))
    return t[reps // 2]


def copy_gbs():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = median_us(lambda i: b.copy_(a), reps=20)
    return 2 * a.numel() / (us * 1e-6) / 1e9


rows = []
bw = copy_gbs()
for (m, k) in [(4096, 4096), (11008, 4096)]:
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    n = m * k
    for dq in (False, True):
        us = median_us(lambda i: F.quantize_4bit(xs[i % 4], blocksize=64, quant_type="nf4", compress_statistics=dq))
        moved = n * 2 + n // 2 + (n // 64) * (1 if dq else 4)
        rows.append(dict(shape=f"{m}x{k}", op="quantize nf4" + (" + double quant" if dq else ""), us=us,
                         gbs_input=n * 2 / (us * 1e-6) / 1e9, frac_copy=moved / (us * 1e-6) / 1e9 / bw))
        qs = [F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=dq) for x in xs]
        us = median_us(lambda i: F.dequantize_4bit(qs[i % 4][0], qs[i % 4][1]))
        rows.append(dict(shape=f"{m}x{k}", op="dequantize nf4" + (" (nested absmax)" if dq else "") + " -> bf16",
                         us=us, gbs_input=n * 2 / (us * 1e-6) / 1e9, frac_copy=moved / (us * 1e-6) / 1e9 / bw))
out = dict(bench="bnb_quant_peer", device=torch.cuda.get_device_name(), copy_gbs=bw,
           bitsandbytes="source build of the fetched repository (0.50.2.dev0)", torch=torch.__version__, rows=rows)
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(f"copy bandwidth {bw:.0f} GB/s")
for r in rows:
    print(f"{r['shape']:<11} {r['op']:<42} {r['us']:8.1f} us {r['frac_copy']*100:6.1f}% of copy")
