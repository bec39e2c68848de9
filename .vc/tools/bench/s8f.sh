#!/usr/bin/env bash
# session 8, sixth device call: what a kernel boundary costs (tools/bench/gaps.cu: chains of
# dependent launches on a stream and from a CUDA graph), three times
set -u
OUT=${OUT:-$PWD/out}
export PATH="$PATH:/usr/local/cuda/bin"
nvcc -O2 -arch=sm_90 tools/bench/gaps.cu -o /tmp/gaps || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader
for i in 1 2 3; do /tmp/gaps; done 2>&1 | tee "$OUT/gaps.txt"
# then DINOv3 128/64: the step with its phases and the SM clock, and the same step's kernels
# under ncu (each alone, at the clock they get alone), summed per kernel
. tools/bench/build.sh
G=./build-gpu/tools/gcache
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 250 >"$OUT/smi.csv" 2>&1 &
smi=$!
$G bench --model dinov3-vit-b16 --batch 128 --chunk 64 2>&1 | grep -vE '^\{' | tee "$OUT/dinov3-128-64.txt"
kill $smi
awk -F', ' '{gsub(/ MHz/,"",$2); print $2}' "$OUT/smi.csv" | sort -n | awk '{a[NR]=$1} END {print "SM clock samples:", NR, "median", a[int((NR+1)/2)], "MHz"}'
timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model dinov3-vit-b16 --batch 128 --chunk 64 --steps 1 --warmup 0 >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
python3 tools/bench/ncu_agg.py "$OUT/ncu.csv" >"$OUT/ncu-dinov3-128-64.txt"; head -45 "$OUT/ncu-dinov3-128-64.txt"
gzip -f "$OUT/ncu.csv"
echo "all took $(( $(date +%s) - t0 )) s"
