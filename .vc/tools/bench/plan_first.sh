#!/usr/bin/env bash
# GC_GEMM_PLAN: gemm tests, then rows with the heuristic, timing into a plan, and from the plan
. tools/bench/build.sh
CK_RUN_CASE=gemm timeout 120 ./build-gpu/tests/test_gpu 2>&1 | grep -E "gemm plan|Checks|:F:|:E:" | head
G=./build-gpu/tools/gcache
PLAN=$OUT/h200.gemmplan
for mode in heur tune file; do
for r in "clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1" "clip-vit-b16 --batch 128 --chunk 64" "dinov3-vit-b16 --batch 256 --chunk 64" "clip-vit-b16 --batch 4096 --chunk 256 --steps 2 --warmup 1"; do
  set -- $r; m=$1; shift
  if [ $mode = heur ]; then unset GC_GEMM_PLAN; else export GC_GEMM_PLAN=$PLAN; fi
  timeout 90 $G bench --model $m "$@" 2>&1 | grep -E "step |gemm plan|pairs|utilis|error" | sed "s|^|[$mode $m $*] |" | tee -a "$OUT/ours.txt"
done
done
wc -l $PLAN
echo "all took $(( $(date +%s) - t0 )) s"
