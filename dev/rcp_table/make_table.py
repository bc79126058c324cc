"""Builds src/quant/data/rcp_approx_sm90.bin.z from the output of probe.cu run on an H100.

bitsandbytes is compiled with --use_fast_math, so its kernels compute 1.0f/absmax with the
GPU's approximate reciprocal (PTX rcp.approx.ftz.f32, the MUFU.RCP unit). That result differs
from the correctly rounded 1/x by one ulp, up or down, for about 13% of inputs, and it depends
only on the mantissa (the exponent just scales it; results below FLT_MIN flush to zero). The
probe records every mantissa of [1, 2) where it differs; this script stores the difference as
2 bits per mantissa (0: same as IEEE, 1: +1 ulp, 2: -1 ulp; entry i in byte i/4, bits 2*(i%4)),
zlib-compressed: ~150 KB instead of 2 MB.

usage: OUTF=rcp_diff.bin ./probe   (on the GPU machine)
       python3 make_table.py rcp_diff.bin ../../src/quant/data/rcp_approx_sm90.bin.z
"""
import sys
import zlib

import numpy as np

raw = np.fromfile(sys.argv[1], dtype=np.uint8).reshape(-1, 5)
idx = raw[:, :4].copy().view(np.uint32).reshape(-1)
dif = raw[:, 4].view(np.int8)
assert set(np.unique(dif).tolist()) <= {-1, 1}
codes = np.zeros(1 << 23, dtype=np.uint8)
codes[idx] = np.where(dif > 0, 1, 2)
packed = (codes.reshape(-1, 4).astype(np.uint32) << np.array([0, 2, 4, 6], dtype=np.uint32)).sum(1).astype(np.uint8)
blob = zlib.compress(packed.tobytes(), 9)
open(sys.argv[2], "wb").write(blob)
print(f"{len(idx)} mantissas differ from IEEE; {len(blob)} bytes written")
