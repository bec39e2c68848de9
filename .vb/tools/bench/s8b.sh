#!/usr/bin/env bash
# session 8, second device call: dQ from the stored dS (flash backward without causality;
# docs/bench/2026-11-29-s8-ds-path.patch over c51afcd, measured slower and not kept).
# The flash GPU cases (each non-causal case three ways: dS, dS a batch a slice, dQ
# recomputed) and the flash timing; then B/16 128/64, DINOv3 256/64 and B/16 4096/256 (host
# pixels) against the tree before (.head0/, carried), alternating.
. tools/bench/build.sh
{
CK_FORK=no CK_RUN_CASE=flash timeout 200 build-gpu/tests/test_gpu 2>&1 | grep -E "Checks|:F:|:E:|FAIL" | head -40
CK_FORK=no CK_RUN_CASE=flash_bench timeout 90 build-gpu/tests/test_gpu 2>&1 | grep -E "attention|FAIL|Checks"
} 2>&1 | tee "$OUT/flash-tests.txt"
echo "tests done $(( $(date +%s) - t0 )) s"
. tools/bench/ab.sh
for round in 1 2; do
  for side in before after; do
    row $side "b16-128/64 r$round" --model clip-vit-b16 --batch 128 --chunk 64
    row $side "dinov3-256/64 r$round" --model dinov3-vit-b16 --batch 256 --chunk 64
  done
done
for side in before after; do
  row $side "b16-4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
echo "all took $(( $(date +%s) - t0 )) s"
