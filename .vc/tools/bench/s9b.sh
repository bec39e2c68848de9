#!/usr/bin/env bash
# session 9, third and fourth device calls: gemm_sm90.cu with a ping-pong schedule (each consumer
# warpgroup on whole tiles, alternately): its correctness cases, then its timing against
# cuBLASLt and the cooperative schedule; DINOv3 256/64 and B/16 128/64 with the epilogue
# (GC_GEMM_SM90=act, the default) and without it (off), alternating.
. tools/bench/build.sh
echo "== gemm_sm90"
CK_FORK=no CK_RUN_CASE=gemm_sm90 timeout 120 build-gpu/tests/test_gpu 2>&1 | tee "$OUT/gemm-sm90-test.txt" | grep -vE "^ok|rel err" | tail -20
grep -q "100%: Checks" "$OUT/gemm-sm90-test.txt" || { echo "gemm_sm90 failed: stop"; exit 1; }
echo "== gemm_sm90_bench"
CK_FORK=no CK_RUN_CASE=gemm_sm90_bench timeout 120 build-gpu/tests/test_gpu 2>&1 | tee "$OUT/gemm-sm90-bench.txt" | grep -E "gemm|FAIL|Checks"
for round in 1; do
  for m in off act; do
    echo "[$m r$round] $(GC_GEMM_SM90=$m ./build-gpu/tools/gcache bench --model dinov3-vit-b16 --batch 256 --chunk 64 2>&1 | grep -E '^ *step ')"
  done
done
echo "all took $(( $(date +%s) - t0 )) s"
