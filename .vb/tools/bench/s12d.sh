#!/usr/bin/env bash
# session 12, fourth call: our CUDA kernels under compute-sanitizer, which no session had
# run: memcheck (out-of-bounds and misaligned accesses, errors of the API) over test_gpu's
# case groups of our own kernels and one model test in bf16 (the gradient cache end to end),
# then racecheck and synccheck (shared-memory hazards, barriers) over the flash cases.
# Each under its own limit; the summaries into $OUT/sanitizer.txt, the reports beside it.
. tools/bench/build.sh
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "compute-sanitizer: $CS"
T=./build-gpu/tests/test_gpu
san() { # tool, label, limit, command...
  local tool=$1 l=$2 lim=$3; shift 3
  local s=$(date +%s)
  CK_FORK=no CK_DEFAULT_TIMEOUT=1000 timeout $lim "$CS" --tool $tool --print-limit 30 "$@" >"$OUT/san-$tool-$l.txt" 2>&1
  local rc=$?
  echo "[$tool $l] rc $rc, $(( $(date +%s) - s )) s: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san-$tool-$l.txt" | tail -1) $(grep -cE '^[0-9]+%: Checks: .*Failures: [1-9]|:F:' "$OUT/san-$tool-$l.txt") check failures"
}
{
CK_RUN_CASE=flash san memcheck flash 120 $T
for c in elementwise:45 norm:35 misc:45 attention:35 gemm_sm90:50; do CK_RUN_CASE=${c%:*} san memcheck ${c%:*} ${c#*:} $T; done
GC_TEST_DEVICE=cuda GC_TEST_DTYPE=bf16 san memcheck dinov3-bf16 50 ./build-gpu/tests/test_dinov3
CK_RUN_CASE=flash san racecheck flash 100 --racecheck-report all $T
CK_RUN_CASE=flash san synccheck flash 30 $T
} 2>&1 | tee "$OUT/sanitizer.txt"
echo "all took $(( $(date +%s) - t0 )) s"
