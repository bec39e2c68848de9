#!/usr/bin/env bash
# session 11, last kernel change (the Delta kernel 16 bytes a thread, for the fused flash
# backward, now the default): the whole GPU suite and the flash timing, DINOv3 split
# against fused, then the table of docs/BENCHMARKS.md side by side (bench_compare.sh).
. tools/bench/build.sh
. tools/bench/suite.sh
for im in flash-split auto; do
  GC_ATTN_IMPL=$im timeout 100 ./build-gpu/tools/gcache bench --model dinov3-vit-b16 --batch 256 --chunk 64 >/tmp/one.txt 2>&1
  echo "[$im dinov3 256/64] $(grep -E '^ *step ' /tmp/one.txt | head -1)"
done | tee "$OUT/ab.txt"
timeout 290 tools/bench_compare.sh 2>&1 | tee "$OUT/bench.txt" | grep -E "step |peak memory|pairs/s|^torch|\"ms\"|error" | head -60
echo "all took $(( $(date +%s) - t0 )) s"
