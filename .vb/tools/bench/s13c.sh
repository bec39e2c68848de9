#!/usr/bin/env bash
# session 13, third call: the act_bias kernels reworked (forward one row a thread, backward
# rows loaded in groups of 4); the same with groups of 2 (a copy built in /tmp/g2); the
# tree before the MLP change (.head0 = fe9ab11). Rows alternating, then the act_bias
# kernels of one B/16 512/256 step under ncu, both group sizes.
. tools/bench/build.sh
mkdir -p /tmp/g2 && tar --exclude=./build-gpu --exclude=./.head0 --exclude=./build -cf - . | tar -xf - -C /tmp/g2
sed -i 's/^constexpr int kGroup = 4;/constexpr int kGroup = 2;/' /tmp/g2/kernels/elementwise.cu
grep -n "^constexpr int kGroup" /tmp/g2/kernels/elementwise.cu
(cd /tmp/g2 && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tools/gcache >/dev/null 2>&1) || echo "g2: build failed"
echo "g2 built $(( $(date +%s) - t0 )) s"
. tools/bench/ab.sh
row2() { # the g2 build: as row, side g2
  local label=$1; shift
  /tmp/g2/build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  echo "[g2 $label] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  grep '^{' /tmp/one.txt | sed "s|^{|{\"side\":\"g2\",\"label\":\"$label\",|" >>"$OUT/ab.jsonl"
}
{
for k in 1 2; do
  row before "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
  row after "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
  row2 "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
row before "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
row after "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
row2 "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
} 2>&1 | tee "$OUT/ab-summary.txt"
echo "rows done $(( $(date +%s) - t0 )) s"
for g in 4 2; do
  G=./build-gpu/tools/gcache; [ $g = 2 ] && G=/tmp/g2/build-gpu/tools/gcache
  timeout 120 ncu --clock-control none --kernel-name regex:'act_bias|colsum' --metrics gpu__time_duration.sum --csv $G bench \
    --model clip-vit-b16 --batch 512 --chunk 256 --steps 1 --warmup 0 >/tmp/ncu$g.csv 2>/dev/null
  gzip -c /tmp/ncu$g.csv >"$OUT/ncu-act-group$g.csv.gz"
  echo "group $g"; python3 tools/bench/ncu_agg.py /tmp/ncu$g.csv 2>/dev/null | head -8
done 2>&1 | tee "$OUT/ncu-act.txt"
echo "all took $(( $(date +%s) - t0 )) s"
