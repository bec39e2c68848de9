#!/usr/bin/env bash
# session 10, last device call: clusters of 2 with the peer's empty barriers arrived on at
# the default (CTA-scope release) semantics, as CUTLASS's ClusterBarrier does, instead of
# .release.cluster: the gemm_sm90 cases (every schedule, with and without clusters), its
# timing against cuBLASLt, then the rows with every forward GEMM of a linear on it
# (GC_GEMM_SM90=all) in clusters of 2, against cuBLASLt (off).
. tools/bench/build.sh
export CK_FORK=no
ok=1
for c in gemm_sm90 gemm_sm90_bench; do
  CK_RUN_CASE=$c timeout 200 build-gpu/tests/test_gpu >"$OUT/$c.txt" 2>&1
  rc=$?; echo "== $c rc $rc ($(( $(date +%s) - t0 )) s)"; [ $rc = 0 ] || ok=0
  grep -iE "fail|differ" "$OUT/$c.txt" | head -20
  grep -E "^gemm |^gemm_sm90|Checks" "$OUT/$c.txt" | grep -v "rel err"
done
[ $ok = 1 ] || { echo "not timing the models"; exit 1; }
row() { # MODE CLUSTER ARGS...
  local sm=$1 cl=$2; shift 2
  GC_GEMM_SM90=$sm GC_GEMM_SM90_CLUSTER=$cl timeout 150 ./build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  echo "[$sm cluster $cl $*] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  sed "s|^|[$sm cluster $cl $*] |" /tmp/one.txt >>"$OUT/rows.txt"
}
for round in 1 2; do
  for mode in "off 1" "all 2" "act 2"; do
    row $mode --model dinov3-vit-b16 --batch 256 --chunk 64
    row $mode --model clip-vit-b16 --batch 128 --chunk 64
  done
done
for mode in "off 1" "all 2"; do
  row $mode --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
echo "all took $(( $(date +%s) - t0 )) s"
