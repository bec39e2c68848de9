#!/usr/bin/env python3
import csv, sys, collections
# sum gpu__time_duration per kernel name from `ncu --csv --metrics gpu__time_duration.sum`
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
hdr = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
h = rows[hdr]; ki = h.index("Kernel Name"); mi = h.index("Metric Value"); ui = h.index("Metric Unit")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[hdr + 1:]:
    if len(r) <= mi: continue
    v = float(r[mi].replace(",", "")); u = r[ui]
    ms = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0}.get(u, 1e3) * v
    tot[r[ki][:90]] += ms; cnt[r[ki][:90]] += 1
T = sum(tot.values())
print(f"total GPU time {T:.2f} ms over {sum(cnt.values())} kernels")
for k, v in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"{v:9.3f} ms {cnt[k]:6d} {100 * v / T:5.1f}%  {k}")
