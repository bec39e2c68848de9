#!/usr/bin/env bash
# session 7, fourth device call: the whole GPU suite after the last kernel change (the
# per-row broadcast on the vector path, the layer-scale fold), then DINOv3 256/64 against
# the tree before the fold (.head0/, carried: 020393a) alternating, with the heuristic and
# with session 6's plan file, and PyTorch's DINOv3 row in the same run
. tools/bench/build.sh
. tools/bench/suite.sh
(cd ../.head0 && meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 && ninja -C build-gpu tools/gcache >/dev/null 2>&1) || echo "before: build failed"
echo "before built $(( $(date +%s) - t0 )) s"
cp docs/bench/2026-11-29-s6-h200.gemmplan "$OUT/h200.gemmplan"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader -lms 500 >"$OUT/smi.csv" 2>&1 &
smi=$!
: >"$OUT/dinov3-ab.jsonl"
for round in 1 2; do
  for side in before after; do
    G=./build-gpu/tools/gcache; [ $side = before ] && G=../.head0/build-gpu/tools/gcache
    for extra in "" "--no-recompute"; do
      $G bench --model dinov3-vit-b16 --batch 256 --chunk 64 $extra >/tmp/one.txt 2>&1
      grep -v '^{' /tmp/one.txt | sed "s/^/[$side, round $round] /" >>"$OUT/dinov3-ab.txt"
      echo "[$side, round $round] dinov3 256/64 $extra: $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1)"
      grep '^{' /tmp/one.txt | sed "s/^{/{\"side\":\"$side\",\"round\":$round,/" >>"$OUT/dinov3-ab.jsonl"
    done
  done
done
for side in before after; do
  G=./build-gpu/tools/gcache; [ $side = before ] && G=../.head0/build-gpu/tools/gcache
  for extra in "" "--no-recompute"; do
    $G bench --model dinov3-vit-b16 --batch 256 --chunk 64 $extra --gemm-plan "$OUT/h200.gemmplan" >/tmp/one.txt 2>&1
    grep -v '^{' /tmp/one.txt | sed "s/^/[$side, plan] /" >>"$OUT/dinov3-ab.txt"
    echo "[$side, plan] dinov3 256/64 $extra: $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1)"
    grep '^{' /tmp/one.txt | sed "s/^{/{\"side\":\"$side\",\"round\":\"plan\",/" >>"$OUT/dinov3-ab.jsonl"
  done
done
kill $smi
echo "ours done $(( $(date +%s) - t0 )) s"
SKIP_OURS=1 TORCH_ONLY=dinov3 timeout 150 tools/bench_compare.sh >"$OUT/bench-torch.txt" 2>&1; tail -4 "$OUT/bench-torch.txt"
echo "all took $(( $(date +%s) - t0 )) s"
