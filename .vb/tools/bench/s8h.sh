#!/usr/bin/env bash
# session 8, eighth device call: programmatic dependent launch for every kernel of ours
# (runtime/gc_launch.cuh). The whole GPU suite, then DINOv3 256/64 and B/16 128/64 against
# the tree before (.head0/, carried), alternating.
. tools/bench/build.sh
. tools/bench/suite.sh
. tools/bench/ab.sh
for round in 1 2; do
  for side in before after; do
    row $side "dinov3-256/64 r$round" --model dinov3-vit-b16 --batch 256 --chunk 64
    row $side "b16-128/64 r$round" --model clip-vit-b16 --batch 128 --chunk 64
  done
done
echo "all took $(( $(date +%s) - t0 )) s"
