#!/usr/bin/env bash
# session 17, first call: the whole GPU suite after the session's kernel changes (the fused
# backward's O in one buffer, no Delta scratch; the rotary embedding inside the flash
# forward, tested by the new "flash" case test_flash_rope), the flash timing before
# (.head0 = 77dbbf8) and after, then DINOv3 256/64 before and after (its no-grad forwards
# now rotate q and k in the attention's tiles), by default and at its best within memory.
. tools/bench/build.sh
(cd .head0 && ln -sfn ../.device-debs .device-debs && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 &&
 ninja -C build-gpu tools/gcache tests/test_gpu >/dev/null 2>&1 && echo "before built") >/tmp/head0.log 2>&1 &
. tools/bench/suite.sh
wait; cat /tmp/head0.log
grep -E "rope|FAIL" "$OUT/gpu_tests.log" | head -40 >"$OUT/rope-cases.txt"
{
for k in 1 2; do
  echo "[before flash_bench $k]"; CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 .head0/build-gpu/tests/test_gpu 2>&1 | grep -E "attention|FAIL"
  echo "[after flash_bench $k]"; CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 build-gpu/tests/test_gpu 2>&1 | grep -E "attention|FAIL"
done
} 2>&1 | tee "$OUT/flash-ab.txt"
echo "flash a/b done $(( $(date +%s) - t0 )) s"
. tools/bench/ab.sh
P="$OUT/h200.gemmplan"
{
for k in 1 2; do
  for side in before after; do
    [ $(( $(date +%s) - t0 )) -lt 520 ] && row $side "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
  done
done
for side in before after; do
  [ $(( $(date +%s) - t0 )) -lt 520 ] && row $side "dinov3 256/64 best" --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute --gemm-plan "$P"
done
} 2>&1 | tee "$OUT/ab-summary.txt"
echo "all took $(( $(date +%s) - t0 )) s"
