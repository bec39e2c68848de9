#!/usr/bin/env bash
# session 16, second call: the fused attention backward with dQ a tile behind (one barrier a
# tile), its key loop unrolled, and Delta made per tile inside it. The flash tests (CPU
# reference, split kernels), the flash timing, ncu of the new kernel, then DINOv3 256/64 and
# B/16 128/64 against the session's start (.head0 = dfdb53e), alternating, and 4096/256.
. tools/bench/build.sh
(cd .head0 && ln -sfn ../.device-debs .device-debs && meson setup build-gpu -Dcuda=enabled && ninja -C build-gpu tools/gcache) >/tmp/head0.log 2>&1 &
{
CK_RUN_CASE=flash timeout 200 build-gpu/tests/test_gpu 2>&1 | tail -15
CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 build-gpu/tests/test_gpu 2>&1 | grep -E "attention|FAIL"
} 2>&1 | tee "$OUT/flash.txt"
echo "flash done $(( $(date +%s) - t0 )) s"
CK_FORK=no CK_RUN_CASE=flash_bench timeout 120 ncu --clock-control none -k "regex:flash_bwd_fused_kernel" --launch-count 1 --set full \
  --import-source yes -o "$OUT/ncu-fused" build-gpu/tests/test_gpu >/dev/null 2>&1
ncu -i "$OUT/ncu-fused.ncu-rep" --page details >"$OUT/ncu-fused-details.txt" 2>&1
ncu -i "$OUT/ncu-fused.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu-fused-source.csv" 2>&1
rm -f "$OUT/ncu-fused.ncu-rep"
wait
. tools/bench/ab.sh
rows_ab
echo "all took $(( $(date +%s) - t0 )) s"
