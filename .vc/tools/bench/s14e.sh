#!/usr/bin/env bash
# session 14, fifth call: racecheck over test_gpu's `gemm` case group (the MLP's act_bias
# kernels and the column sums, with their shared-memory trees and tickets), cuBLASLt's
# nvjet kernels left out by name (their TMA/mbarrier ordering is what racecheck reports
# as hazards: tests/sanitize.sh).
. tools/bench/build.sh
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
CK_FORK=no CK_RUN_CASE=gemm timeout 240 "$CS" --tool racecheck --kernel-name-exclude kns=nvjet --print-limit 50 \
  build-gpu/tests/test_gpu >/tmp/race.txt 2>&1
echo "rc $?"
grep -E 'RACECHECK SUMMARY|^[0-9]+%: Checks|:F:|:E:' /tmp/race.txt | tail -5 | tee "$OUT/racecheck-gemm.txt"
grep -E '^=========' /tmp/race.txt | head -40 | tee -a "$OUT/racecheck-gemm.txt"
grep -cE 'act_bias|colsum' /tmp/race.txt | sed 's/^/lines naming act_bias or colsum: /' | tee -a "$OUT/racecheck-gemm.txt"
echo "all took $(( $(date +%s) - t0 )) s"
