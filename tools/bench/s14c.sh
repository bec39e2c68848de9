#!/usr/bin/env bash
# session 14, third call (right after s14b, on the same machine): the table of
# docs/BENCHMARKS.md side by side, our rows then PyTorch's (tools/bench_compare.sh), with no
# limit of its own (session 11's 290 s cut PyTorch's half).
. tools/bench/build.sh
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 500 >"$OUT/smi.csv" 2>&1 &
smi=$!
timeout 540 tools/bench_compare.sh 2>&1 | tee "$OUT/bench.txt" | grep -E "step |peak memory|pairs/s|^torch|\"ms\"|error" | head -60
kill $smi
awk -F', ' '{gsub(/ MHz/,"",$2); print $2}' "$OUT/smi.csv" | sort -n | awk '{a[NR]=$1} END {print "SM clock samples:", NR, "median", a[int((NR+1)/2)], "MHz"}'
echo "all took $(( $(date +%s) - t0 )) s"
