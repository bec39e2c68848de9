#!/usr/bin/env bash
# session 7, third device call: where the layer-scale fold's time went: DINOv3 256/64 with
# its phases, then one 128/64 step's kernels under ncu (summed per kernel)
. tools/bench/build.sh
G=./build-gpu/tools/gcache
$G bench --model dinov3-vit-b16 --batch 256 --chunk 64 2>&1 | grep -vE '^\{' | tee "$OUT/dinov3-phases.txt"
timeout 240 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model dinov3-vit-b16 --batch 128 --chunk 64 --steps 1 --warmup 0 >"$OUT/ncu_dino.csv" 2>"$OUT/ncu_dino.err"
python3 tools/bench/ncu_agg.py "$OUT/ncu_dino.csv" > "$OUT/ncu-dinov3-128-64-fold.txt"; head -40 "$OUT/ncu-dinov3-128-64-fold.txt"
gzip "$OUT/ncu_dino.csv"
echo "all took $(( $(date +%s) - t0 )) s"
