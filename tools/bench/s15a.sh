#!/usr/bin/env bash
# session 15, first call: DINOv3's class-token embedding on the class row alone in the last
# layer, and q on the query rows alone in every rows block (CLIP's last blocks too): the
# whole GPU suite, then the rows against the session's start (.head0 = cfea896),
# alternating.
. tools/bench/suite_ab.sh
{
rows_small
for side in before after; do
  row $side "b16 4096/256" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1
done
} 2>&1 | tee "$OUT/ab-summary.txt"
echo "all took $(( $(date +%s) - t0 )) s"
