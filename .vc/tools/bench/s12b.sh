#!/usr/bin/env bash
# session 12, second call: the whole GPU suite at the session's last kernel change (the
# flash backward's shared tile function, the forward's skipped padding keys; the BGRADB
# change taken back out), the flash timing, then one B/16 512/256 step's kernels under ncu
# (each alone), summed per kernel: where the time goes now (the table's was session 6's).
. tools/bench/build.sh
. tools/bench/suite.sh
G=./build-gpu/tools/gcache
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model clip-vit-b16 --batch 512 --chunk 256 --steps 1 --warmup 0 >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
python3 tools/bench/ncu_agg.py "$OUT/ncu.csv" >"$OUT/ncu-b16-512-256.txt"; head -40 "$OUT/ncu-b16-512-256.txt"
gzip -f "$OUT/ncu.csv"
echo "all took $(( $(date +%s) - t0 )) s"
