#!/usr/bin/env bash
# session 13, fourth call, at the session's last kernel change: the MLP change's kernels
# (act_bias backward one row at a time again, act_f_df) against the tree before the MLP
# change (.head0 = fe9ab11), alternating; the act_bias kernels of a B/16 512/256 step under
# ncu; the whole GPU suite; memcheck over the models' bf16 tests and racecheck hazards in
# the act_bias kernels.
. tools/bench/build.sh
. tools/bench/ab.sh
{
for k in 1 2; do
  for side in before after; do
    row $side "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
    row $side "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
  done
done
} 2>&1 | tee "$OUT/ab-summary.txt"
echo "rows done $(( $(date +%s) - t0 )) s"
timeout 120 ncu --clock-control none --kernel-name regex:'act_bias|colsum' --metrics gpu__time_duration.sum --csv \
  ./build-gpu/tools/gcache bench --model clip-vit-b16 --batch 512 --chunk 256 --steps 1 --warmup 0 >/tmp/ncu.csv 2>/dev/null
gzip -c /tmp/ncu.csv >"$OUT/ncu-act.csv.gz"
python3 tools/bench/ncu_agg.py /tmp/ncu.csv 2>/dev/null | head -6 | tee "$OUT/ncu-act.txt"
. tools/bench/suite.sh
{
tests/sanitize.sh build-gpu memcheck:model:dinov3 memcheck:model:recompute
CK_FORK=no GC_TEST_DEVICE=cuda GC_TEST_DTYPE=bf16 timeout 100 compute-sanitizer --tool racecheck --print-limit 100000 \
  build-gpu/tests/test_dinov3_gpu >/tmp/race.txt 2>&1
echo "racecheck dinov3 bf16: $(grep -E 'RACECHECK SUMMARY' /tmp/race.txt | tail -1); hazard lines naming act_bias or colsum: $(grep -cE 'act_bias|colsum' /tmp/race.txt)"
} 2>&1 | tee "$OUT/sanitize.txt"
echo "all took $(( $(date +%s) - t0 )) s"
