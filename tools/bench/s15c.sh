#!/usr/bin/env bash
# session 15, third and last call: the table of docs/BENCHMARKS.md side by side
# (tools/bench_compare.sh, our rows and then PyTorch's, as s12c.sh runs it), then the whole
# GPU suite at the session's last change.
. tools/bench/build.sh
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 500 >"$OUT/smi.csv" 2>&1 &
smi=$!
timeout 280 tools/bench_compare.sh 2>&1 | tee "$OUT/bench.txt" | grep -E "step |peak memory|pairs/s|^torch|\"ms\"|error" | head -60
kill $smi
awk -F', ' '{gsub(/ MHz/,"",$2); print $2}' "$OUT/smi.csv" | sort -n | awk '{a[NR]=$1} END {print "SM clock samples:", NR, "median", a[int((NR+1)/2)], "MHz"}'
echo "table done $(( $(date +%s) - t0 )) s"
. tools/bench/suite.sh
echo "all took $(( $(date +%s) - t0 )) s"
