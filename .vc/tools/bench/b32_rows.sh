#!/usr/bin/env bash
# session 5, the last device call: B/32 4096/256 with the heuristic, a given plan file (.bench/h200.gemmplan), plan + --keep-norms, and the heuristic again
. tools/bench/build.sh
cp .bench/h200.gemmplan $OUT/plan
G=./build-gpu/tools/gcache
for r in "" "--gemm-plan $OUT/plan" "--gemm-plan $OUT/plan --keep-norms" ""; do
  timeout 60 $G bench --model clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1 $r 2>&1 | grep -E "step |gemm plan|peak|pairs|utilis" | sed "s|^|[b32 $r] |"
done
echo "all took $(( $(date +%s) - t0 )) s"
