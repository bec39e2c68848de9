#!/usr/bin/env bash
# session 6, last device call: sustained GEMM throughput on random operands, with the SM
# clock and board power; the flash timing with the D <= 64 kernels compiled for 3 blocks
# an SM (168 registers, no spills) against the default 4
set -u
OUT=${OUT:-$PWD/out}
. tools/gpu_env.sh
t0=$(date +%s)
nvcc -O2 -arch=sm_90 tools/bench/sustain.cu -lcublas -o /tmp/sustain &&
{ nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader -lms 1000 & smi=$!; /tmp/sustain; kill $smi; } >"$OUT/sustain-random.txt" 2>&1
grep -v "^window" "$OUT/sustain-random.txt" | tail -6
grep "^window" "$OUT/sustain-random.txt" | awk 'NR > 5 {s += $6; n++} END {printf "mean of windows 6..%d: %.1f TFLOP/s\n", n + 5, s / n}'
echo "sustain done $(( $(date +%s) - t0 )) s"
for mb in 4 3; do
  meson setup build-fa$mb -Dcuda=enabled -Dcuda_args=-DGC_FA_MIN_BLOCKS=$mb >/dev/null 2>&1 && ninja -C build-fa$mb tests/test_gpu >/dev/null 2>&1 &&
    CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 build-fa$mb/tests/test_gpu 2>&1 | grep -E "flash  |FAIL" | sed "s/^/[$mb blocks] /"
done 2>&1 | tee "$OUT/flash-min-blocks.txt"
echo "all took $(( $(date +%s) - t0 )) s"
