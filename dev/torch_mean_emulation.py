"""NumPy float32 emulation of `t.mean()` for a contiguous 1-D float32 CUDA tensor
(PyTorch 2.11 on CUDA, upstream build, default NVIDIA H100 SXM: 132 SMs,
2048 max resident threads per SM).

Derived by reading PyTorch 2.11's Reduce.cuh / SharedReduceOps.h (shipped in the
wheel's include/ dir) and ReduceMomentKernel.cu / ReduceOps.cpp:

* On CUDA, mean is NOT sum-then-divide: it is one reduction kernel whose final
  "project" step is `acc * factor` with `factor = 1.0f / float(n)` (factor is
  computed on the host in float32).  Accumulation is in float32.
* Launch config for one output of n inputs (vt0 = input_vec_size = 4):
    - n >= 128: "vectorize along input": threads load aligned float4 vectors;
      dim0 = n // 4.  Otherwise plain strided per-element loads, dim0 = n.
    - block width bw = last_pow2(dim0) clamped to 512; block height 1.
    - values_per_thread = ceil(n / bw) (n counted in *elements*).
    - if values_per_thread >= 256: split the input over
      ctas = max(min(num_sms * (2048 // bw), ceil(vpt/16)), ceil(vpt/256))
      thread blocks, finished by the last block via a global staging buffer.
* Per thread (vectorized): four accumulators, accumulator j gets element j of
  each float4 vector the thread visits (vector index = cta*bw + lane, stepping
  by bw*ctas while the whole vector fits); leftover n%4 elements are added to
  accumulator 0 of lanes 0..n%4-1 of CTA 0; then ((a0+a1)+a2)+a3.
* Per thread (non-vectorized, n < 128): four accumulators over elements
  lane + i*bw; with bw = last_pow2(n) each lane sees at most two elements.
* Block: if bw > 32, shared-memory halving t[i] += t[i+off] for
  off = bw/2 .. 32; then warp shuffle-down with DECREASING offsets
  (min(bw,32)/2 .. 1): v[i] += v[i+off].  Lane 0 holds the block total.
* Multi-CTA: lane t of the last block sums staged CTA totals t, t+bw, ...
  sequentially (starting from 0), then the same block tree as above.

Run: python3 dev/torch_mean_emulation.py  (checks all double-quant q4 fixture cases)
"""
import json
import struct
import sys

import numpy as np

F = np.float32


def last_pow2(n: int) -> int:
    n = int(n)
    for s in (1, 2, 4, 8, 16):
        n |= n >> s
    return max(1, n - (n >> 1))


def reduce_config(n: int, num_sms: int = 132, max_threads_per_sm: int = 2048):
    vectorize = n >= 128
    dim0 = n // 4 if vectorize else n
    max_threads = 512
    bw = last_pow2(dim0) if dim0 < max_threads else max_threads
    vpt = -(-n // bw)
    ctas = 1
    if vpt >= 16 and vpt >= 256:  # split across warps (no-op, bh=1) and CTAs
        target = num_sms * (max_threads_per_sm // bw)
        c1 = target  # grid.x == 1
        c2 = -(-vpt // 16)
        c3 = -(-vpt // 256)
        ctas = max(min(c1, c2), c3)
    return vectorize, bw, ctas


def block_tree(vals: np.ndarray) -> np.float32:
    """vals: float32 array of length bw (power of two). Returns lane-0 total."""
    v = vals.astype(F).copy()
    bw = len(v)
    off = bw // 2
    while bw > 32 and off >= 32:
        v[:off] = v[:off] + v[off:2 * off]
        off //= 2
    dim_x = min(bw, 32)
    off = dim_x // 2
    while off > 0:
        v[:off] = v[:off] + v[off:2 * off]
        off //= 2
    return F(v[0])


def torch_cuda_mean_f32(x, num_sms: int = 132) -> np.float32:
    x = np.ascontiguousarray(x, dtype=F).reshape(-1)
    n = len(x)
    assert n > 0
    vectorize, bw, ctas = reduce_config(n, num_sms)
    nthreads = bw * ctas  # global thread g = cta*bw + lane
    if vectorize:
        nvec = n // 4
        acc = np.zeros((4, nthreads), dtype=F)
        start = 0
        while start < nvec:
            cnt = min(nthreads, nvec - start)
            chunk = x[4 * start: 4 * (start + cnt)].reshape(cnt, 4)
            for j in range(4):
                acc[j, :cnt] = acc[j, :cnt] + chunk[:, j]
            start += nthreads
        rem = n % 4
        if rem:
            tail = x[n - rem:]
            acc[0, :rem] = acc[0, :rem] + tail  # CTA 0, lanes 0..rem-1
        tv = ((acc[0] + acc[1]) + acc[2]) + acc[3]
    else:
        assert ctas == 1
        acc = np.zeros((4, bw), dtype=F)
        # each lane visits lane + i*bw; main loop needs all 4 in range
        idx = np.arange(bw)
        i = 0
        while True:
            full = idx + 3 * bw < n
            if not full.any():
                break
            for k in range(4):
                acc[k, full] = acc[k, full] + x[(idx + k * bw)[full]]
            idx = np.where(full, idx + 4 * bw, idx)
        for k in range(4):
            m = idx + k * bw < n
            acc[k, m] = acc[k, m] + x[(idx + k * bw)[m]]
        tv = ((acc[0] + acc[1]) + acc[2]) + acc[3]
    cta_tot = np.array([block_tree(tv[c * bw:(c + 1) * bw]) for c in range(ctas)], dtype=F)
    if ctas == 1:
        total = cta_tot[0]
    else:
        staged = np.zeros(bw, dtype=F)
        for s in range(0, ctas, bw):
            part = cta_tot[s:s + bw]
            staged[:len(part)] = staged[:len(part)] + part
        total = block_tree(staged)
    factor = F(F(1.0) / F(n))
    return F(total * factor)


def _load_fixtures():
    path = '/work/shared/fixtures/bnb/bnb_vectors.safetensors'
    f = open(path, 'rb').read()
    hn = struct.unpack('<Q', f[:8])[0]
    h = json.loads(f[8:8 + hn])
    base = 8 + hn
    dt = {'F32': np.float32, 'F16': np.float16, 'BF16': np.uint16, 'U8': np.uint8,
          'I8': np.int8, 'I64': np.int64}

    def get(k):
        e = h[k]
        a, b = e['data_offsets']
        return np.frombuffer(f[base + a:base + b], dtype=dt[e['dtype']]).reshape(e['shape'])

    idx = json.load(open('/work/shared/fixtures/bnb/bnb_vectors.json'))
    return get, idx


def _tof32(x, d):
    if d == 'bfloat16':
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def absmax_blocks(x, bs):
    n = len(x)
    nb = -(-n // bs)
    out = np.empty(nb, dtype=F)
    for b in range(nb):
        out[b] = np.max(np.abs(x[b * bs:(b + 1) * bs]))
    return out


def main():
    get, idx = _load_fixtures()
    cases = [c for c in idx['cases'] if c['name'].startswith('q4') and c.get('double_quant')]
    ok = 0
    print(f"{'case':8} {'dtype':9} {'bs':>4} {'n':>4} {'cfg':>14} {'target':>14} {'emul':>14} {'naive':>5} match")
    for c in cases:
        x = _tof32(get(c['name'] + '.input'), c['dtype']).reshape(-1)
        am = absmax_blocks(x, c['blocksize'])
        tgt = F(c['nested_offset'])
        got = torch_cuda_mean_f32(am)
        naive = F(F(am.sum(dtype=F)) * F(F(1) / F(len(am))))
        vec, bw, ctas = reduce_config(len(am))
        m = got.view(np.uint32) == tgt.view(np.uint32)
        ok += bool(m)
        print(f"{c['name']:8} {c['dtype']:9} {c['blocksize']:>4} {len(am):>4} "
              f"{('v' if vec else 's') + str(bw) + 'x' + str(ctas):>14} {float(tgt):>14.9g} {float(got):>14.9g} "
              f"{'ok' if naive == tgt else 'BAD':>5} {'OK' if m else 'MISMATCH'}")
    print(f"{ok}/{len(cases)} match")
    return 0 if ok == len(cases) else 1


if __name__ == '__main__':
    sys.exit(main())
