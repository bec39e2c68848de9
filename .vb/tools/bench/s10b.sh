#!/usr/bin/env bash
# session 10, second device call: gemm_sm90.cu's timing against cuBLASLt again (clusters
# now never more than one wave of the GPU), then the rows with GC_GEMM_SM90 off (cuBLASLt),
# act (fc1 and its activation on our kernel) and all (every forward GEMM of a linear on it),
# no clusters (the default).
. tools/bench/build.sh
export CK_FORK=no
CK_RUN_CASE=gemm_sm90_bench timeout 200 build-gpu/tests/test_gpu >"$OUT/gemm_sm90_bench.txt" 2>&1
echo "== bench rc $? ($(( $(date +%s) - t0 )) s)"; grep -E "^gemm |Checks|FAIL|fail" "$OUT/gemm_sm90_bench.txt"
row() { # MODE ARGS...
  local sm=$1; shift
  GC_GEMM_SM90=$sm timeout 150 ./build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  echo "[$sm $*] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  sed "s|^|[$sm $*] |" /tmp/one.txt >>"$OUT/rows.txt"
}
for round in 1 2; do
  for sm in off act all; do
    row $sm --model dinov3-vit-b16 --batch 256 --chunk 64
    row $sm --model clip-vit-b16 --batch 128 --chunk 64
  done
done
for sm in off act all; do
  row $sm --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
echo "all took $(( $(date +%s) - t0 )) s"
