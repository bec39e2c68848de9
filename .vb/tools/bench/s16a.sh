#!/usr/bin/env bash
# session 16, first call: the whole GPU suite at ed036b5 (the host-side gradcache changes of
# session 15 after its last GPU run), then a look inside the fused attention backward: ncu's
# full set on one B/16-image launch and one DINOv3 launch, and the kernel's SASS.
. tools/bench/build.sh
. tools/bench/suite.sh
{
cuobjdump -sass -fun regex:flash_bwd_fused_kernelILi64ELb0ELb0E build-gpu/libgc.a.p/kernels_flash_attention.cu.o >"$OUT/sass-fused.txt" 2>&1 \
  || cuobjdump -sass build-gpu/libgc.a.p/kernels_flash_attention.cu.o >"$OUT/sass-all.txt" 2>&1
for k in "flash_bwd_fused_kernel" "flash_fwd_kernel"; do
  CK_FORK=no CK_RUN_CASE=flash_bench timeout 120 ncu --clock-control none -k "regex:$k" --launch-count 1 --set full \
    --import-source yes -o "$OUT/ncu-$k" build-gpu/tests/test_gpu >/dev/null 2>&1
  ncu -i "$OUT/ncu-$k.ncu-rep" --page details >"$OUT/ncu-$k-details.txt" 2>&1
  ncu -i "$OUT/ncu-$k.ncu-rep" --page source --csv --print-source sass >"$OUT/ncu-$k-source.csv" 2>&1
done
ls -la "$OUT"
} 2>&1 | tail -20
echo "all took $(( $(date +%s) - t0 )) s"
