#!/usr/bin/env bash
# session 5's final device run, part 1: build, the whole gpu suite, flash timing, then our
# rows of tools/bench_compare.sh twice: cuBLASLt's heuristic, and with a GEMM plan file
# (timed during each row's warm-up, then read back by the later rows)
. tools/bench/build.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
{
timeout 200 meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 4 >"$OUT/gpu_tests.log" 2>&1
grep -E "^ *[0-9]+/[0-9]+ " "$OUT/gpu_tests.log" | sort -u
grep -hE ":F:|:E:|FAIL" build-gpu/meson-logs/testlog.txt | sort -u | head -30
grep -hE "gemm plan" build-gpu/meson-logs/testlog.txt | head -3
CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 build-gpu/tests/test_gpu 2>&1 | grep -E "attention|FAIL"
cp build-gpu/meson-logs/testlog.txt "$OUT/testlog.txt"
} 2>&1 | tee "$OUT/gpu-tests.txt"
echo "tests done $(( $(date +%s) - t0 )) s"
SKIP_TORCH=1 timeout 200 tools/bench_compare.sh 2>&1 | tee "$OUT/bench-heuristic.txt"
echo "heuristic rows done $(( $(date +%s) - t0 )) s"
GEMM_PLAN=$OUT/h200.gemmplan SKIP_TORCH=1 timeout 220 tools/bench_compare.sh 2>&1 | tee "$OUT/bench-plan.txt"
echo "all took $(( $(date +%s) - t0 )) s"
