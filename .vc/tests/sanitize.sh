#!/usr/bin/env bash
# The GPU tests under compute-sanitizer: memcheck (out-of-bounds and misaligned accesses,
# CUDA API errors) over test_gpu's case groups and the models' bf16 tests, racecheck
# (shared-memory hazards) and synccheck (barriers) over the kernels whose blocks share
# memory. Skipped (77) without a GPU or without the tool.
# Usage: tests/sanitize.sh BUILD_DIR [check ...]; a check is tool:target, target a test_gpu
# case group or model:<name> (test_<name>_gpu in bf16); without checks, all of them.
set -u
build=$1
shift
T=$build/tests/test_gpu
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
[ -x "$CS" ] || { echo "sanitize: no compute-sanitizer (skipped)"; exit 77; }
CK_FORK=no CK_RUN_CASE=none "$T" >/dev/null 2>&1
[ $? = 77 ] && { echo "sanitize: no CUDA device (skipped)"; exit 77; }

checks=("$@")
if [ ${#checks[@]} = 0 ]; then
  for c in runtime pinned gemm gemm_sm90 elementwise norm attention flash misc; do checks+=("memcheck:$c"); done
  for m in clip dinov3 lora recompute memory; do checks+=("memcheck:model:$m"); done
  # not misc, gemm or gemm_sm90: cuBLASLt's Hopper kernels (and ours, alike) order shared
  # memory with TMA and mbarriers, which racecheck does not follow, so it reports hazards
  # there (docs/BENCHMARKS.md, session 12)
  for c in flash norm elementwise attention; do checks+=("racecheck:$c"); done
  for c in flash gemm_sm90; do checks+=("synccheck:$c"); done
fi

fail=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for c in "${checks[@]}"; do
  tool=${c%%:*} target=${c#*:}
  opts=(--tool "$tool" --error-exitcode 9 --print-limit 20)
  # these two cases provoke CUDA API errors on purpose (a 1 PiB cudaMalloc, registering
  # host memory twice) and check that the library reports them
  case $target in runtime | pinned) opts+=(--report-api-errors no) ;; esac
  t0=$(date +%s)
  if [ "${target#model:}" != "$target" ]; then
    m=${target#model:}
    CK_FORK=no GC_TEST_DEVICE=cuda GC_TEST_DTYPE=bf16 "$CS" "${opts[@]}" "$build/tests/test_${m}_gpu" >"$log" 2>&1
  else
    CK_FORK=no CK_RUN_CASE=$target "$CS" "${opts[@]}" "$T" >"$log" 2>&1
  fi
  rc=$?
  summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1 | sed 's/^=* *//')
  checked=$(grep -E '^[0-9]+%: Checks' "$log" | tail -1)
  echo "$tool $target: rc $rc, $(( $(date +%s) - t0 )) s, ${summary:-no summary}; ${checked:-no test summary}"
  # no test summary, or none run (a case group that does not exist): a failure too
  if [ $rc != 0 ] || [ -z "$checked" ] || [ "${checked#*Checks: 0,}" != "$checked" ]; then
    fail=1
    grep -E '^=========|:F:|:E:' "$log" | head -40
  fi
done
exit $fail
