#!/usr/bin/env bash
# session 7, first device call: the build and the whole GPU suite (after the gc_linear_act
# leak fix), then s6e's two measurements: sustained GEMM throughput on random operands with
# the clock and power, and the flash timing with the D <= 64 kernels compiled for 3 blocks
# an SM against the default 4 (build-gpu)
. tools/bench/build.sh
. tools/bench/suite.sh
nvcc -O2 -arch=sm_90 tools/bench/sustain.cu -lcublas -o /tmp/sustain &&
{ nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader -lms 1000 & smi=$!; /tmp/sustain; kill $smi; } >"$OUT/sustain-random.txt" 2>&1
grep -v "^window" "$OUT/sustain-random.txt" | tail -14
grep "^window" "$OUT/sustain-random.txt" | awk 'NR > 5 {s += $6; n++} END {printf "mean of windows 6..%d: %.1f TFLOP/s\n", n + 5, s / n}'
echo "sustain done $(( $(date +%s) - t0 )) s"
{
meson setup build-fa3 -Dcuda=enabled -Dcuda_args=-DGC_FA_MIN_BLOCKS=3 >/dev/null 2>&1 && ninja -C build-fa3 tests/test_gpu >/dev/null 2>&1 || echo "fa3 build failed"
for i in 1 2; do
  for b in build-gpu:4 build-fa3:3; do
    CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 ${b%:*}/tests/test_gpu 2>&1 | grep -E "flash |FAIL" | sed "s/^/[${b#*:} blocks, pass $i] /"
  done
done
} 2>&1 | tee "$OUT/flash-min-blocks.txt"
echo "all took $(( $(date +%s) - t0 )) s"
