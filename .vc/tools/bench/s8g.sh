#!/usr/bin/env bash
# session 8, seventh device call: gaps.cu again, now with programmatic dependent launch
set -u
OUT=${OUT:-$PWD/out}
export PATH="$PATH:/usr/local/cuda/bin"
nvcc -O2 -arch=sm_90 tools/bench/gaps.cu -o /tmp/gaps || exit 1
for i in 1 2 3; do /tmp/gaps; done 2>&1 | tee "$OUT/gaps-pdl.txt"
