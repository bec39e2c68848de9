#!/usr/bin/env bash
# session 11, last device call: the Hopper flash forward (flash_fwd_sm90_kernel: wgmma, every
# key at once) and the fused backward on by default, gemm_sm90.cu on the shared sm90 header:
# the whole GPU suite (its flash cases run each shape on auto, on the portable kernels,
# GC_ATTN_IMPL=flash-sm80, and on the GEMM path) and the flash timing, then DINOv3 256/64
# on both while the device time lasts. Ran at e878837, whose kernels were then taken back
# out (the suite's gpu test was killed by this script's 220 s limit before its verdict, and
# no device time was left): they are docs/bench/2026-11-29-s11-flash-fwd-sm90.patch.
. tools/bench/build.sh
. tools/bench/suite.sh
grep -E "flash|FAIL|fail" "$OUT/gpu_tests.log" | grep -iE "fail|error" | head -20
for im in flash-sm80 auto; do
  GC_ATTN_IMPL=$im timeout 25 ./build-gpu/tools/gcache bench --model dinov3-vit-b16 --batch 256 --chunk 64 >/tmp/one.txt 2>&1
  echo "[$im dinov3 256/64] $(grep -E '^ *step ' /tmp/one.txt | head -1)"
done | tee "$OUT/ab.txt"
echo "all took $(( $(date +%s) - t0 )) s"
