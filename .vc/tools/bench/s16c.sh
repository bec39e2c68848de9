#!/usr/bin/env bash
# session 16, third call: the whole GPU suite after the session's kernel change (the fused
# attention backward), then the two open rows in the configurations that spend what their
# memory targets leave: DINOv3 256/64 with the activations kept and a GEMM plan (target
# <= 6 GiB), B/16 4096/256 with host pixels and a GEMM plan (<= 12 GiB); each beside its
# default, in this call.
. tools/bench/build.sh
. tools/bench/suite.sh
one() { # LABEL BENCH-ARGS...: the step, memory and pairs/s lines; the JSON line into rows.jsonl
  local label=$1; shift
  ./build-gpu/tools/gcache bench "$@" >/tmp/one.txt 2>&1
  grep -v '^{' /tmp/one.txt | sed "s|^|[$label] |" >>"$OUT/rows.txt"
  echo "[$label] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  grep '^{' /tmp/one.txt | sed "s|^{|{\"label\":\"$label\",|" >>"$OUT/rows.jsonl"
}
{
P="$OUT/h200.gemmplan"
one "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
one "dinov3 256/64 plan keep" --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute --gemm-plan "$P"
one "dinov3 256/64 plan keep, again" --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute --gemm-plan "$P"
one "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
one "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
one "b16 4096/256 host plan" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host --gemm-plan "$P"
} 2>&1 | tee "$OUT/rows-summary.txt"
echo "all took $(( $(date +%s) - t0 )) s"
