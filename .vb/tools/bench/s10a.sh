#!/usr/bin/env bash
# session 10, first device call: gemm_sm90.cu with the ping-pong epilogue staged in shared
# memory for TMA stores, and clusters of 2 CTAs sharing their B tiles by TMA multicast: its
# GPU cases (every schedule, with and without clusters) and its timing against cuBLASLt; then,
# if they pass, DINOv3 256/64 and B/16 128/64 with fc1's activation in its epilogue
# (GC_GEMM_SM90=act) and without (off), alternating.
. tools/bench/build.sh
export CK_FORK=no
ok=1
for c in gemm_sm90 gemm_sm90_bench; do
  CK_RUN_CASE=$c timeout 300 build-gpu/tests/test_gpu >"$OUT/$c.txt" 2>&1
  rc=$?; echo "== $c rc $rc ($(( $(date +%s) - t0 )) s)"; [ $rc = 0 ] || ok=0
  grep -iE "fail|error|differ" "$OUT/$c.txt" | head -20
  grep -E "^gemm |Checks" "$OUT/$c.txt"
done
[ $ok = 1 ] || { echo "not timing the models"; exit 1; }
for round in 1 2; do
  for sm in off act; do
    for m in "dinov3-vit-b16 --batch 256 --chunk 64" "clip-vit-b16 --batch 128 --chunk 64"; do
      GC_GEMM_SM90=$sm timeout 120 ./build-gpu/tools/gcache bench --model $m >/tmp/one.txt 2>&1
      echo "[$sm $m] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1)"
      sed "s|^|[$sm $round $m] |" /tmp/one.txt >>"$OUT/rows.txt"
    done
  done
done
echo "all took $(( $(date +%s) - t0 )) s"
