#!/usr/bin/env bash
# session 5's final device run, part 2 (right after part 1, on the same machine): the
# PyTorch + GradCache rows of tools/bench_compare.sh
set -u
OUT=${OUT:-$PWD/out}
t0=$(date +%s)
SKIP_OURS=1 timeout 400 tools/bench_compare.sh 2>&1 | tee "$OUT/bench-torch.txt"
echo "all took $(( $(date +%s) - t0 )) s"
