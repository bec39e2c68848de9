#!/usr/bin/env bash
# session 8, eighth device call: programmatic dependent launch for every kernel of ours
# (runtime/gc_launch.cuh). The whole GPU suite, then DINOv3 256/64 and B/16 128/64 against
# the tree before (.head0/, carried), alternating.
. tools/bench/build.sh
. tools/bench/suite.sh
(cd .head0 && ln -sfn ../.device-debs .device-debs && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tools/gcache >/dev/null 2>&1) || echo "before: build failed"
echo "before built $(( $(date +%s) - t0 )) s"
: >"$OUT/ab.jsonl"
row() { # side label args...
  local side=$1 label=$2; shift 2
  local G=./build-gpu/tools/gcache; [ $side = before ] && G=.head0/build-gpu/tools/gcache
  $G bench "$@" >/tmp/one.txt 2>&1
  grep -v '^{' /tmp/one.txt | sed "s|^|[$side $label] |" >>"$OUT/ab.txt"
  echo "[$side $label] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1)"
  grep '^{' /tmp/one.txt | sed "s|^{|{\"side\":\"$side\",\"label\":\"$label\",|" >>"$OUT/ab.jsonl"
}
for round in 1 2; do
  for side in before after; do
    row $side "dinov3-256/64 r$round" --model dinov3-vit-b16 --batch 256 --chunk 64
    row $side "b16-128/64 r$round" --model clip-vit-b16 --batch 128 --chunk 64
  done
done
echo "all took $(( $(date +%s) - t0 )) s"
