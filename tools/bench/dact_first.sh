#!/usr/bin/env bash
# For the session that takes up docs/bench/2026-11-30-s17-dact-epilogue.patch (the MLP
# activation's backward in the epilogue of the GEMM of its input gradient,
# GC_GEMM_SM90=dact; DESIGN.md "Where the MLP activation's backward goes next"): apply it
# here with `patch -p1` (no git on the device), build, the gemm_sm90 cases (the MLP cases
# with dact against the CPU), the whole GPU suite with GC_GEMM_SM90=dact (the model
# fixtures then take it), then the open rows at their best, dact against off, alternating.
. tools/bench/build.sh
patch -p1 --forward < docs/bench/2026-11-30-s17-dact-epilogue.patch >"$OUT/patch.log" 2>&1 || { cat "$OUT/patch.log"; exit 1; }
ninja -C build-gpu >"$OUT/build-dact.log" 2>&1 || { grep -E "error" "$OUT/build-dact.log" | head -30; exit 1; }
echo "patched and built $(( $(date +%s) - t0 )) s"
CK_RUN_CASE=gemm_sm90 timeout 240 build-gpu/tests/test_gpu 2>&1 | grep -E "dact|FAIL|Checks" | tail -40 | tee "$OUT/dact-cases.txt"
GC_GEMM_SM90=dact timeout 330 meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 4 >"$OUT/gpu_tests.log" 2>&1
grep -E "^ *[0-9]+/[0-9]+ " "$OUT/gpu_tests.log" | sort -u | tee "$OUT/gpu-tests.txt"
echo "suite done $(( $(date +%s) - t0 )) s"
P="$OUT/h200.gemmplan"
. tools/bench/one.sh
{
for k in 1 2; do
  for sm in off dact; do
    [ $(( $(date +%s) - t0 )) -lt 520 ] || break
    one $sm "dinov3 256/64 best" --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute --gemm-plan "$P"
  done
done
for sm in off dact; do
  [ $(( $(date +%s) - t0 )) -lt 540 ] || break
  one $sm "b16 4096/256 best" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host --gemm-plan "$P"
done
} 2>&1 | tee "$OUT/dact-rows.txt"
echo "all took $(( $(date +%s) - t0 )) s"
