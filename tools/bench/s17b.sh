#!/usr/bin/env bash
# session 17, second call: which of the fused backward's clean-ups cost time (s17a read the
# fused kernel 1 to 2 % slower after 27a2447). Four trees, flash_bench twice each, in turn:
#   before = .head0 (77dbbf8), all = this tree (O in one buffer, dot8_bf16, fused_dq's K
#   operand through mma_b2, no Delta scratch), vb = all less mma_b2, vc = vb less O in one
#   buffer (dot8_bf16 and no Delta scratch alone). The whole GPU suite runs on vc, the
#   candidate with the fused kernel's spills of before.
set -u
OUT=${OUT:-$PWD/out}
echo "at $(cat .commit 2>/dev/null)"
. tools/gpu_env.sh
t0=$(date +%s)
for v in .head0 .vb .vc; do ln -sfn ../.device-debs $v/.device-debs; done
meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tests/test_gpu >/tmp/b-all.log 2>&1 &
(cd .head0 && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tests/test_gpu) >/tmp/b-head0.log 2>&1 &
(cd .vb && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tests/test_gpu) >/tmp/b-vb.log 2>&1 &
(cd .vc && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu) >/tmp/b-vc.log 2>&1 &
wait
for f in /tmp/b-*.log; do tail -1 $f; grep -m3 error $f; done
echo "built $(( $(date +%s) - t0 )) s"
(cd .vc && timeout 330 meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 4 >"$OUT/gpu_tests.log" 2>&1)
{ grep -E "^ *[0-9]+/[0-9]+ " "$OUT/gpu_tests.log" | sort -u
  grep -hE ":F:|:E:|FAIL" .vc/build-gpu/meson-logs/testlog.txt | sort -u | head -30
  grep -E "flash .*(rel err|FAIL)" .vc/build-gpu/meson-logs/testlog.txt | head -5; } | tee "$OUT/gpu-tests.txt"
echo "suite done $(( $(date +%s) - t0 )) s"
{
for k in 1 2; do
  for v in before all vb vc; do
    d=.; [ $v = before ] && d=.head0; [ $v = vb ] && d=.vb; [ $v = vc ] && d=.vc
    [ $(( $(date +%s) - t0 )) -lt 560 ] || break
    CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 $d/build-gpu/tests/test_gpu 2>&1 | grep -E "flash +fwd|FAIL" | sed "s|^|[$v $k] |"
  done
done
} 2>&1 | tee "$OUT/flash-variants.txt"
echo "all took $(( $(date +%s) - t0 )) s"
