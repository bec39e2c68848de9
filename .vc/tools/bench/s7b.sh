#!/usr/bin/env bash
# session 7, second device call: the layer-scale fold (gc_linear_scaled) against the tree
# before it (.head0/, carried: 020393a), DINOv3 256/64 side by side, alternating; first the
# GPU cases the fold touches (test_gpu gemm, the DINOv3 fixtures, recompute, memory)
. tools/bench/build.sh
{
for t in dinov3_cuda_f32 dinov3_cuda_bf16 recompute_cuda_f32 recompute_cuda_bf16 memory_cuda_bf16; do
  timeout 120 meson test -C build-gpu $t --print-errorlogs 2>&1 | grep -E "^ *[0-9]+/[0-9]+ |:F:|:E:"
done
CK_FORK=no CK_RUN_CASE=gemm GC_TEST_DEVICE=cuda timeout 200 build-gpu/tests/test_gpu 2>&1 | grep -E "scaled|linear_act_res|Checks|:F:|:E:"
} 2>&1 | tee "$OUT/fold-tests.txt"
echo "tests done $(( $(date +%s) - t0 )) s"
(cd ../.head0 && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tools/gcache >/dev/null 2>&1) || echo "before: build failed"
echo "before built $(( $(date +%s) - t0 )) s"
for round in 1 2; do
  for side in before after; do
    G=./build-gpu/tools/gcache; [ $side = before ] && G=../.head0/build-gpu/tools/gcache
    for extra in "" "--no-recompute"; do
      $G bench --model dinov3-vit-b16 --batch 256 --chunk 64 $extra >/tmp/one.txt 2>&1
      echo "[$side, round $round] dinov3 256/64 $extra: $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1)"
      grep '^{' /tmp/one.txt | sed "s/^/$side $round /" >>"$OUT/fold-ab.jsonl"
    done
  done
done 2>&1 | tee "$OUT/fold-ab.txt"
echo "all took $(( $(date +%s) - t0 )) s"
