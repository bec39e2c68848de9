#!/usr/bin/env bash
# session 8, third device call (over docs/bench/2026-11-29-s8-colsum-rows.patch, not kept):
# rows per block of the column sums (bias gradients,
# kernels/matmul.cu colsum: GC_COLSUM_RPC) and of the layernorm weight/bias partials
# (kernels/norm.c: GC_NORM_WB_ROWS), read from the environment for this run only. The GPU
# cases that use them at each setting, those kernels' times under ncu (one DINOv3 128/64
# and one B/16 256/256 step), then end-to-end rows at the old and the best settings.
. tools/bench/build.sh
G=./build-gpu/tools/gcache
sets="256:64 512:256 1024:256 1024:512"
{
for s in 512:256 1024:256; do
  echo "== rpc ${s%:*} wb ${s#*:}"
  GC_COLSUM_RPC=${s%:*} GC_NORM_WB_ROWS=${s#*:} CK_FORK=no CK_RUN_CASE=norm timeout 100 build-gpu/tests/test_gpu 2>&1 | grep -E "Checks|:F:|:E:" | head -5
  GC_COLSUM_RPC=${s%:*} GC_NORM_WB_ROWS=${s#*:} CK_FORK=no CK_RUN_CASE=gemm timeout 200 build-gpu/tests/test_gpu 2>&1 | grep -E "Checks|:F:|:E:" | head -5
done
} 2>&1 | tee "$OUT/tests.txt"
echo "tests done $(( $(date +%s) - t0 )) s"
for s in $sets; do
  for m in "dinov3-vit-b16 --batch 128 --chunk 64" "clip-vit-b16 --batch 256 --chunk 256"; do
    tag=$(echo "$m" | cut -d' ' -f1)-${s/:/-}
    GC_COLSUM_RPC=${s%:*} GC_NORM_WB_ROWS=${s#*:} timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum \
      --kernel-name regex:"colsum|norm_wb|col_sum" --csv $G bench --model $m --steps 1 --warmup 0 >"$OUT/ncu-$tag.csv" 2>/dev/null
    echo "== $tag: $(python3 tools/bench/ncu_agg.py "$OUT/ncu-$tag.csv" | head -4 | tr '\n' ';')"
  done
done 2>&1 | tee "$OUT/ncu.txt"
echo "ncu done $(( $(date +%s) - t0 )) s"
best=${BEST:-1024:256}
for round in 1 2; do
  for s in 256:64 $best; do
    for m in "dinov3-vit-b16 --batch 256 --chunk 64" "clip-vit-b16 --batch 128 --chunk 64"; do
      GC_COLSUM_RPC=${s%:*} GC_NORM_WB_ROWS=${s#*:} $G bench --model $m >/tmp/one.txt 2>&1
      echo "[$s r$round] $m: $(grep -E '^ *step ' /tmp/one.txt | head -1)"
    done
  done
done 2>&1 | tee "$OUT/ab.txt"
echo "all took $(( $(date +%s) - t0 )) s"
