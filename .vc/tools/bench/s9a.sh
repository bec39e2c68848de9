#!/usr/bin/env bash
# session 9, first device call: kernels/gemm_sm90.cu (Hopper GEMM, activation epilogue).
# Its correctness cases alone first (a hang or a failure ends the call), then its timing
# against cuBLASLt, the whole GPU suite, and DINOv3 256/64, B/16 128/64 and B/16 4096/256
# against the tree before (.head0/, carried), alternating.
. tools/bench/build.sh
echo "== gemm_sm90"
CK_FORK=no CK_RUN_CASE=gemm_sm90 timeout 120 build-gpu/tests/test_gpu 2>&1 | tee "$OUT/gemm-sm90-test.txt" | grep -vE "^ok" | tail -40
grep -q "100%: Checks" "$OUT/gemm-sm90-test.txt" || { echo "gemm_sm90 failed: stop"; exit 1; }
echo "== gemm_sm90_bench"
CK_FORK=no CK_RUN_CASE=gemm_sm90_bench timeout 120 build-gpu/tests/test_gpu 2>&1 | tee "$OUT/gemm-sm90-bench.txt" | grep -E "gemm|FAIL|Checks"
. tools/bench/suite.sh
. tools/bench/ab.sh
for round in 1 2; do
  for side in before after; do
    row $side "dinov3-256/64 r$round" --model dinov3-vit-b16 --batch 256 --chunk 64
    row $side "b16-128/64 r$round" --model clip-vit-b16 --batch 128 --chunk 64
  done
done
for side in before after; do
  row $side "b16-4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
echo "all took $(( $(date +%s) - t0 )) s"
