#!/usr/bin/env bash
# session 11: the fused flash backward (flash_bwd_fused_kernel: one block per (batch, kv
# head) holds every key, dQ from dS^T in shared memory) against the split one (dQ and dK/dV
# kernels, GC_ATTN_IMPL=flash-split): the flash correctness cases (each also split and on
# the GEMM path), the flash timing (both), then the rows, alternating.
. tools/bench/build.sh
export CK_FORK=no
ok=1
for c in flash flash_bench; do
  CK_RUN_CASE=$c timeout 240 build-gpu/tests/test_gpu >"$OUT/$c.txt" 2>&1
  rc=$?; echo "== $c rc $rc ($(( $(date +%s) - t0 )) s)"; [ $rc = 0 ] || ok=0
  grep -iE "fail|differ" "$OUT/$c.txt" | head -20
  grep -E "^attention|Checks" "$OUT/$c.txt"
done
[ $ok = 1 ] || { echo "not timing the models"; exit 1; }
row() { # IMPL ARGS...
  local im=$1; shift
  GC_ATTN_IMPL=$im timeout 150 ./build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  echo "[$im $*] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  sed "s|^|[$im $*] |" /tmp/one.txt >>"$OUT/rows.txt"
}
for round in 1 2; do
  for im in flash-split auto; do
    row $im --model dinov3-vit-b16 --batch 256 --chunk 64
    row $im --model clip-vit-b16 --batch 128 --chunk 64
  done
done
echo "all took $(( $(date +%s) - t0 )) s"
