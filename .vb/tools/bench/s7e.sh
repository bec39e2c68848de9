#!/usr/bin/env bash
# session 7, fifth device call: the whole GPU suite after the last kernel changes (the
# one-pass norm backward, NaN rows in attention), then the one-pass norm backward against
# the tree before it (.head0/, carried: 7736ee6), alternating: B/16 128/64, DINOv3 256/64
# (and with --no-recompute), B/16 4096/256 with host pixels
. tools/bench/build.sh
. tools/bench/suite.sh
(cd ../.head0 && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tools/gcache >/dev/null 2>&1) || echo "before: build failed"
echo "before built $(( $(date +%s) - t0 )) s"
: >"$OUT/norm-ab.jsonl"
run() { # side, label, args...
  local side=$1 label=$2; shift 2
  local G=./build-gpu/tools/gcache; [ $side = before ] && G=../.head0/build-gpu/tools/gcache
  $G bench "$@" >/tmp/one.txt 2>&1
  grep -v '^{' /tmp/one.txt | sed "s/^/[$side, $label] /" >>"$OUT/norm-ab.txt"
  echo "[$side, $label] $*: $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1)"
  grep '^{' /tmp/one.txt | sed "s/^{/{\"side\":\"$side\",\"label\":\"$label\",/" >>"$OUT/norm-ab.jsonl"
}
for round in 1 2; do
  for side in before after; do
    run $side "r$round" --model clip-vit-b16 --batch 128 --chunk 64
    run $side "r$round" --model dinov3-vit-b16 --batch 256 --chunk 64
    run $side "r$round" --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute
  done
done
for side in before after; do
  run $side r1 --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
echo "all took $(( $(date +%s) - t0 )) s"
