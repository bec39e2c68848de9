# Sourced by the A/B scripts (s8b.sh, s8h.sh), after build.sh: builds gcache from the tree
# before, carried in .head0/ (tools/bench/README.md), and defines
#   row SIDE LABEL BENCH-ARGS...   one `gcache bench` run of the tree before (SIDE before)
#                                  or this one (after): its step, memory and pairs/s on the
#                                  console, the whole output in $OUT/ab.txt, its JSON line
#                                  (with side and label) in $OUT/ab.jsonl
(cd .head0 && ln -sfn ../.device-debs .device-debs && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tools/gcache >/dev/null 2>&1) || echo "before: build failed"
echo "before built $(( $(date +%s) - t0 )) s"
: >"$OUT/ab.jsonl"
row() {
  local side=$1 label=$2; shift 2
  local G=./build-gpu/tools/gcache; [ $side = before ] && G=.head0/build-gpu/tools/gcache
  $G bench "$@" >/tmp/one.txt 2>&1
  grep -v '^{' /tmp/one.txt | sed "s|^|[$side $label] |" >>"$OUT/ab.txt"
  echo "[$side $label] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  grep '^{' /tmp/one.txt | sed "s|^{|{\"side\":\"$side\",\"label\":\"$label\",|" >>"$OUT/ab.jsonl"
}
# The rows most A/Bs start with: DINOv3 256/64 and B/16 128/64, before and after, twice.
rows_small() {
  for k in 1 2; do
    for side in before after; do
      row $side "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
      row $side "b16 128/64" --model clip-vit-b16 --batch 128 --chunk 64
    done
  done
}
# rows_small, then B/16 4096/256 before and after, once; the lines also in $OUT/ab-summary.txt
# (s15a, s16b).
rows_ab() {
  {
    rows_small
    for side in before after; do
      row $side "b16 4096/256" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1
    done
  } 2>&1 | tee "$OUT/ab-summary.txt"
}
