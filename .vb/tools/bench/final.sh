#!/usr/bin/env bash
# final device run of the session: build HEAD, the whole gpu suite, flash timing, then
# tools/bench_compare.sh (ours, then PyTorch) side by side
. tools/bench/build.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
{
timeout 200 meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 4 >"$OUT/gpu_tests.log" 2>&1
grep -E "^ *[0-9]+/[0-9]+ " "$OUT/gpu_tests.log" | sort -u
grep -hE ":F:|:E:|FAIL" build-gpu/meson-logs/testlog.txt | sort -u | head -30
grep -hE "worst per-tensor" build-gpu/meson-logs/testlog.txt | awk '{print $NF, $0}' | sort -g | tail -3 | cut -d' ' -f2-
CK_FORK=no CK_RUN_CASE=flash_bench timeout 40 build-gpu/tests/test_gpu 2>&1 | grep -E "attention|FAIL"
cp build-gpu/meson-logs/testlog.txt "$OUT/testlog.txt"
} 2>&1 | tee "$OUT/gpu-tests.txt"
echo "tests done $(( $(date +%s) - t0 )) s"
timeout 330 tools/bench_compare.sh 2>&1 | tee "$OUT/bench.txt"
G=./build-gpu/tools/gcache
for r in "clip-vit-b16 --batch 128 --chunk 64 --pixels host" "dinov3-vit-b16 --batch 256 --chunk 64 --pixels host" "clip-vit-b16 --batch 128 --chunk 64 --replay-all"; do
  set -- $r; m=$1; shift
  timeout 60 $G bench --model $m "$@" 2>&1 | grep -E "step |embed|replay|peak|pairs|^{" | sed "s|^|[$r] |" | tee -a "$OUT/extra_rows.txt"
done
echo "all took $(( $(date +%s) - t0 )) s"
