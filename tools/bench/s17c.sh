#!/usr/bin/env bash
# session 17, third call: where a DINOv3 step's time goes now, in its best configuration
# within memory (128/64 with --no-recompute: one step's kernels under ncu, summed per
# kernel; session 14's profile was of the default at 6c44e1f), then whether the Hopper GEMM's
# activation epilogue (GC_GEMM_SM90=act) adds to the GEMM plan in the two open rows at their
# best, alternating.
. tools/bench/build.sh
G=./build-gpu/tools/gcache
timeout 170 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model dinov3-vit-b16 --batch 128 --chunk 64 \
  --no-recompute --steps 1 --warmup 0 >"$OUT/ncu-dinov3.csv" 2>"$OUT/ncu.err"
python3 tools/bench/ncu_agg.py "$OUT/ncu-dinov3.csv" >"$OUT/ncu-dinov3-128-64-keep.txt"; head -40 "$OUT/ncu-dinov3-128-64-keep.txt"
gzip -f "$OUT/ncu-dinov3.csv"
echo "ncu done $(( $(date +%s) - t0 )) s"
P="$OUT/h200.gemmplan"
. tools/bench/one.sh
{
for k in 1 2; do
  for sm in off act; do
    [ $(( $(date +%s) - t0 )) -lt 480 ] && one $sm "dinov3 256/64 best" --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute --gemm-plan "$P"
  done
done
for sm in off act; do
  [ $(( $(date +%s) - t0 )) -lt 500 ] && one $sm "b16 4096/256 best" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host --gemm-plan "$P"
done
} 2>&1 | tee "$OUT/rows-summary.txt"
echo "all took $(( $(date +%s) - t0 )) s"
