# Sourced by the table scripts (s12c.sh, s14c.sh through it, s15c.sh), after build.sh: the
# table of docs/BENCHMARKS.md side by side (tools/bench_compare.sh, our rows and then
# PyTorch's) under a limit of TABLE_TIMEOUT seconds (default 540), with the SM clock and
# board power sampled every 500 ms into $OUT/smi.csv and their median printed.
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 500 >"$OUT/smi.csv" 2>&1 &
smi=$!
timeout "${TABLE_TIMEOUT:-540}" tools/bench_compare.sh 2>&1 | tee "$OUT/bench.txt" | grep -E "step |peak memory|pairs/s|^torch|\"ms\"|error" | head -60
kill $smi
awk -F', ' '{gsub(/ MHz/,"",$2); print $2}' "$OUT/smi.csv" | sort -n | awk '{a[NR]=$1} END {print "SM clock samples:", NR, "median", a[int((NR+1)/2)], "MHz"}'
