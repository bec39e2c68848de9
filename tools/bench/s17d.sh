#!/usr/bin/env bash
# session 17, fourth call: the layernorm weight/bias partial sums (norm_wb_part_kernel, 2.1 ms
# of s17c's 89 ms at 1.9 TB/s, where the other norm kernels reach 2.9 to 3.1) against the
# rows a block sums (NORM_WB_CHUNK_ROWS, 64 in the tree): each value built into gcache
# (incrementally), the two kernels of one DINOv3 128/64 step under ncu (the first 24 launches
# of each), then DINOv3 256/64 at its best with 64 and the fastest other value, alternating.
. tools/bench/build.sh
orig=$(sed -n 's/^#define NORM_WB_CHUNK_ROWS //p' kernels/norm.c)
for n in 32 64 128 256; do
  sed -i "s/^#define NORM_WB_CHUNK_ROWS .*/#define NORM_WB_CHUNK_ROWS $n/" kernels/norm.c
  ninja -C build-gpu tools/gcache >/dev/null 2>&1 && cp build-gpu/tools/gcache /tmp/gcache_$n || echo "build $n failed"
  timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv -k "regex:norm_wb_part|col_sum_kernel" --launch-count 48 \
    /tmp/gcache_$n bench --model dinov3-vit-b16 --batch 128 --chunk 64 --no-recompute --steps 1 --warmup 0 >"$OUT/ncu-wb-$n.csv" 2>/dev/null
  python3 tools/bench/ncu_agg.py "$OUT/ncu-wb-$n.csv" | sed "s|^|[rows $n] |"
done | tee "$OUT/wb-ncu.txt"
sed -i "s/^#define NORM_WB_CHUNK_ROWS .*/#define NORM_WB_CHUNK_ROWS $orig/" kernels/norm.c
best=$(python3 - "$OUT" <<'PY'
import sys,re
t={}
for l in open(sys.argv[1]+"/wb-ncu.txt"):
    m=re.match(r"\[rows (\d+)\] total GPU time ([\d.]+)",l)
    if m: t[int(m.group(1))]=float(m.group(2))
o={k:v for k,v in t.items() if k!=64}
print(min(o,key=o.get) if o else 128)
PY
)
echo "fastest other than 64: $best $(( $(date +%s) - t0 )) s"
P="$OUT/h200.gemmplan"
{
for k in 1 2; do
  for n in 64 $best; do
    [ $(( $(date +%s) - t0 )) -lt 400 ] || break
    /tmp/gcache_$n bench --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute --gemm-plan "$P" >/tmp/one.txt 2>&1
    echo "[rows $n] $(grep -E '^ *step ' /tmp/one.txt | head -1)"
  done
done
} 2>&1 | tee "$OUT/wb-rows.txt"
echo "all took $(( $(date +%s) - t0 )) s"
