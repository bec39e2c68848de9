#!/usr/bin/env bash
# session 12, first call: the bias gradients from the weight gradients' GEMMs (cuBLASLt's
# BGRADB epilogue, GC_GEMM_BGRAD=on, the new default) against their own column-sum pass
# (off), alternating; then the whole GPU suite (after session 11's last kernel change, the
# flash backward's shared tile function, and the forward's skipped padding keys) and the
# flash timing.
. tools/bench/build.sh
row() { # mode, label, gcache bench arguments
  local m=$1 l=$2; shift 2
  GC_GEMM_BGRAD=$m timeout 120 ./build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  echo "[$m $l] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1)"
  grep -iE 'error' /tmp/one.txt | head -3
}
{
for m in on off on off; do
  row $m "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
  row $m "b16 128/64" --model clip-vit-b16 --batch 128 --chunk 64
done
for m in on off; do
  row $m "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
done
} 2>&1 | tee "$OUT/ab.txt"
echo "rows done $(( $(date +%s) - t0 )) s"
. tools/bench/suite.sh
echo "all took $(( $(date +%s) - t0 )) s"
