#!/usr/bin/env python3
"""Sums an Nsight Compute --csv run (metric gpu__time_duration.sum) by kernel name.

usage: dev/ncu_sum.py RUN.csv [TOP]  -> the total and the TOP kernels by time, with launch counts.
"""
import collections
import csv
import sys


def main():
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25
    rows = [r for r in csv.reader(open(path)) if len(r) > 10]
    if not rows:
        sys.exit(f"{path}: no kernel rows (did ncu run?)")
    head = rows[0]
    ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
    agg = collections.defaultdict(lambda: [0.0, 0])
    for r in rows[1:]:
        name = r[ki].replace("(anonymous namespace)::", "").replace("nibble::<unnamed>::", "").split("(")[0]
        agg[name][0] += float(r[vi].replace(",", "")) * scale[r[ui]]
        agg[name][1] += 1
    total = sum(t for t, _ in agg.values())
    print(f"{path}: {total / 1000:.1f} ms in {sum(c for _, c in agg.values())} kernels")
    for name, (t, c) in sorted(agg.items(), key=lambda x: -x[1][0])[:top]:
        print(f"{t / 1000:8.2f} ms {c:5d}x avg {t / c:8.1f} us  {name[:110]}")


if __name__ == "__main__":
    main()
