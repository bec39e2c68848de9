#!/usr/bin/env bash
# session 10, third device call: the ping-pong epilogue's activation now runs over the
# staging in shared memory (not on the accumulators), and the bf16 sigmoid on the
# special-function unit's reciprocal (quick_gelu, SiLU, tanh-GELU passes and epilogues).
# The whole GPU suite with GC_GEMM_SM90=act (so the HF fixtures run fc1 through the
# epilogue; the gemm_sm90 case sets its own modes), gemm_sm90's timing, then the rows with
# GC_GEMM_SM90 off and act, alternating.
. tools/bench/build.sh
export GC_GEMM_SM90=act; . tools/bench/suite.sh; unset GC_GEMM_SM90
export CK_FORK=no
CK_RUN_CASE=gemm_sm90_bench timeout 200 build-gpu/tests/test_gpu >"$OUT/gemm_sm90_bench.txt" 2>&1
echo "== bench rc $? ($(( $(date +%s) - t0 )) s)"; grep -E "^gemm|Checks|FAIL|fail" "$OUT/gemm_sm90_bench.txt"
row() { # MODE ARGS...
  local sm=$1; shift
  GC_GEMM_SM90=$sm timeout 150 ./build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  echo "[$sm $*] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  sed "s|^|[$sm $*] |" /tmp/one.txt >>"$OUT/rows.txt"
}
for round in 1 2; do
  for sm in off act; do
    row $sm --model dinov3-vit-b16 --batch 256 --chunk 64
    row $sm --model clip-vit-b16 --batch 128 --chunk 64
  done
done
for sm in off act; do
  row $sm --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
  row $sm --model clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1
done
echo "all took $(( $(date +%s) - t0 )) s"
