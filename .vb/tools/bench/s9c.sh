#!/usr/bin/env bash
# session 9, last device call: the whole GPU suite at the session's last kernel change
# (gemm_sm90.cu in it, off by default in the models), then the table of docs/BENCHMARKS.md
# side by side (tools/bench_compare.sh: our rows, then PyTorch's), after session 8's
# programmatic dependent launch, and DINOv3 with --no-recompute.
. tools/bench/build.sh
. tools/bench/suite.sh
tools/bench_compare.sh 2>&1 | tee "$OUT/bench.txt" | grep -E "step |peak memory|pairs/s|^torch|\"ms\"|error" | head -60
echo "== dinov3 --no-recompute"
./build-gpu/tools/gcache bench --model dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute 2>&1 | tee "$OUT/dinov3-no-recompute.txt" | grep -E "step |peak memory"
echo "all took $(( $(date +%s) - t0 )) s"
