#!/usr/bin/env bash
# session 14, fourth call: one B/16 512/256 step's kernels and one DINOv3 128/64 step's under
# ncu, each summed per kernel (ncu_agg.py), with q, k and v in one GEMM ("Where the time goes").
. tools/bench/build.sh
G=./build-gpu/tools/gcache
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model clip-vit-b16 --batch 512 --chunk 256 --steps 1 --warmup 0 >"$OUT/ncu-b16.csv" 2>"$OUT/ncu.err"
python3 tools/bench/ncu_agg.py "$OUT/ncu-b16.csv" >"$OUT/ncu-b16-512-256.txt"; head -30 "$OUT/ncu-b16-512-256.txt"
echo "b16 done $(( $(date +%s) - t0 )) s"
timeout 150 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model dinov3-vit-b16 --batch 128 --chunk 64 --steps 1 --warmup 0 >"$OUT/ncu-dinov3.csv" 2>>"$OUT/ncu.err"
python3 tools/bench/ncu_agg.py "$OUT/ncu-dinov3.csv" >"$OUT/ncu-dinov3-128-64.txt"; head -30 "$OUT/ncu-dinov3-128-64.txt"
gzip -f "$OUT/ncu-b16.csv" "$OUT/ncu-dinov3.csv"
echo "all took $(( $(date +%s) - t0 )) s"
