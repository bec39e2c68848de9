#!/usr/bin/env bash
# session 5, after the plan-file fixes: the gemm test case (plan files), then B/16 128/64
# with --gemm-plan twice (timing into a new file, then read back)
. tools/bench/build.sh
CK_RUN_CASE=gemm timeout 90 ./build-gpu/tests/test_gpu 2>&1 | grep -E "gemm plan|Checks|:F:|:E:" | tee "$OUT/gemm-tests.txt"
for i in 1 2; do
  timeout 60 ./build-gpu/tools/gcache bench --model clip-vit-b16 --batch 128 --chunk 64 --gemm-plan "$OUT/p.gemmplan" 2>&1 | grep -E "step |gemm plan|pairs" | tee -a "$OUT/rows.txt"
done
echo "all took $(( $(date +%s) - t0 )) s"
