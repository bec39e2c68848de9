#!/usr/bin/env bash
set -u
OUT=${OUT:-$PWD/out}
. tools/gpu_env.sh
t0=$(date +%s)
meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 || { echo setup failed; exit 1; }
ninja -C build-gpu >"$OUT/build.log" 2>&1 && rm "$OUT/build.log" || { grep -E "error" "$OUT/build.log" | head; exit 1; }
echo "build ok $(( $(date +%s) - t0 )) s"
cp .bench/h200.gemmplan $OUT/plan
G=./build-gpu/tools/gcache
for r in "" "--gemm-plan $OUT/plan" "--gemm-plan $OUT/plan --keep-norms" ""; do
  timeout 60 $G bench --model clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1 $r 2>&1 | grep -E "step |gemm plan|peak|pairs|utilis" | sed "s|^|[b32 $r] |"
done
echo "all took $(( $(date +%s) - t0 )) s"
