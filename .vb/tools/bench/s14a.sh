#!/usr/bin/env bash
# session 14, first call: q, k and v in one GEMM (bce1291..HEAD: slices' gradients as
# regions of their parent's, strided rope, the packed weights) and the review mends: the
# whole GPU suite, then the rows against the session's start (.head0 = f0c08ef), twice,
# alternating.
. tools/bench/suite_ab.sh
{
for k in 1 2; do
  for side in before after; do
    row $side "b16 4096/256 host" --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host
    row $side "dinov3 256/64" --model dinov3-vit-b16 --batch 256 --chunk 64
    row $side "b16 128/64" --model clip-vit-b16 --batch 128 --chunk 64
  done
done
} 2>&1 | tee "$OUT/ab-summary.txt"
echo "all took $(( $(date +%s) - t0 )) s"
