#!/usr/bin/env bash
# session 13, first call: after the MLP change (fc1's bias taken by the activation's pass,
# whose backward makes the bias gradient and, where it can, the recomputed activation):
# the MLP cases against the CPU first, then the whole GPU suite and the flash timing.
. tools/bench/build.sh
CK_FORK=no CK_RUN_CASE=gemm timeout 150 build-gpu/tests/test_gpu >"$OUT/gemm-cases.txt" 2>&1
grep -E "mlp|linear_and_act .*off|FAIL|Checks|%:" "$OUT/gemm-cases.txt" | tail -60
echo "gemm cases done $(( $(date +%s) - t0 )) s"
. tools/bench/suite.sh
echo "all took $(( $(date +%s) - t0 )) s"
