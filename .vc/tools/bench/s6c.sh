#!/usr/bin/env bash
# session 6: after the erf-GELU, rope and flash (one FMA per score) changes: the whole gpu
# suite, the flash timing (and again with the flash kernels compiled for 3 blocks an SM),
# a DINOv3 step's kernels, our rows, and sustained GEMM throughput with clocks and power
. tools/bench/build.sh
G=./build-gpu/tools/gcache
. tools/bench/suite.sh
meson setup build-gpu3 -Dcuda=enabled -Dcuda_args=-DGC_FA_MIN_BLOCKS=3 >/dev/null 2>&1 && ninja -C build-gpu3 tests/test_gpu >/dev/null 2>&1 &&
  CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 build-gpu3/tests/test_gpu 2>&1 | grep -E "flash  |FAIL" | sed 's/^/[3 blocks] /'
CK_FORK=no CK_RUN_CASE=flash timeout 100 build-gpu3/tests/test_gpu 2>&1 | tail -2 | sed 's/^/[3 blocks] /'
echo "variant done $(( $(date +%s) - t0 )) s"
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model dinov3-vit-b16 --batch 128 --chunk 64 --steps 1 --warmup 0 >"$OUT/dino.csv" 2>"$OUT/dino.log"
python3 tools/bench/ncu_agg.py "$OUT/dino.csv" >"$OUT/dino-sum.txt" 2>&1; head -30 "$OUT/dino-sum.txt"; gzip -f "$OUT/dino.csv"
echo "profile done $(( $(date +%s) - t0 )) s"
for row in "dinov3-vit-b16 --batch 256 --chunk 64 --steps 5 --warmup 2" "clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1" \
           "clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1"; do
  $G bench --model $row 2>&1 | grep -E "^ *step|pairs/s|TFLOP|\{" | sed "s/^/[${row%% *}] /"
done
echo "rows done $(( $(date +%s) - t0 )) s"
nvcc -O2 -arch=sm_90 tools/bench/sustain.cu -lcublas -o /tmp/sustain &&
{ nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader -lms 1000 & smi=$!; /tmp/sustain; kill $smi; } 2>&1 | tee "$OUT/sustain.txt"
echo "all took $(( $(date +%s) - t0 )) s"
