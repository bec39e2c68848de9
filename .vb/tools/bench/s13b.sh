#!/usr/bin/env bash
# session 13, second call (warm): the MLP change against the tree before it (.head0 =
# fe9ab11), alternating; then one B/16 512/256 step's kernels under ncu.
. tools/bench/build.sh
. tools/bench/ab.sh
{
rows_small
for side in before after before after; do
  row $side "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
} 2>&1 | tee "$OUT/ab-summary.txt"
echo "rows done $(( $(date +%s) - t0 )) s"
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv ./build-gpu/tools/gcache bench --model clip-vit-b16 \
  --batch 512 --chunk 256 --steps 1 --warmup 0 >/tmp/ncu.csv 2>/dev/null
gzip -c /tmp/ncu.csv >"$OUT/ncu-raw.csv.gz"
python3 tools/bench/ncu_agg.py </tmp/ncu.csv | head -45 >"$OUT/ncu.txt"; head -20 "$OUT/ncu.txt"
echo "all took $(( $(date +%s) - t0 )) s"
