#!/usr/bin/env bash
# session 15, second call: uploads beside the computation (gc_upload, the gradient cache's
# chunks a chunk ahead): the whole GPU suite, then B/16 4096/256 with host pixels against
# the tree before it (.head0 = cddb9a8, after s15a's change), alternating.
. tools/bench/suite_ab.sh
{
for k in 1 2; do
  for side in before after; do
    row $side "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
  done
done
for side in before after; do
  row $side "b16 4096/256" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1
  row $side "dinov3 256/64 host" --model dinov3-vit-b16 --batch 256 --chunk 64 --pixels host
done
} 2>&1 | tee "$OUT/ab-summary.txt"
echo "all took $(( $(date +%s) - t0 )) s"
