#!/usr/bin/env bash
# session 12, fifth and seventh calls (on the machine s12d left warm, build-gpu/ from it;
# the sixth printed the first racecheck hazards of `misc` in full, --print-limit 12):
# compute-sanitizer over what s12d did not cover, then the racecheck hazards of the `misc`
# and `runtime` cases grouped by the kernel they were found in.
. tools/gpu_env.sh >/dev/null 2>&1
OUT=${OUT:-$PWD/out}
CS=/usr/local/cuda/bin/compute-sanitizer T=./build-gpu/tests/test_gpu
ninja -C build-gpu >/dev/null 2>&1
s() { # tool, label, limit, command...
  t=$1 l=$2 lim=$3; shift 3
  CK_FORK=no CK_DEFAULT_TIMEOUT=1000 timeout $lim $CS --tool $t --print-limit 30 "$@" >$OUT/san-$t-$l.txt 2>&1
  echo "[$t $l] rc $? : $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/san-$t-$l.txt | tail -1) | $(grep -E '^[0-9]+%: Checks' $OUT/san-$t-$l.txt | tail -1)"
}
# the fifth call
for c in gemm runtime pinned; do CK_RUN_CASE=$c s memcheck $c 60 $T; done
for m in clip lora recompute memory; do GC_TEST_DEVICE=cuda GC_TEST_DTYPE=bf16 s memcheck $m-bf16 60 ./build-gpu/tests/test_$m; done
for c in norm elementwise misc attention; do CK_RUN_CASE=$c s racecheck $c 60 --racecheck-report all $T; done
CK_RUN_CASE=gemm_sm90 s synccheck gemm_sm90 60 $T
# the seventh: where the hazards are
CK_FORK=no CK_RUN_CASE=misc timeout 90 $CS --tool racecheck --racecheck-report all --print-limit 100000 $T 2>&1 |
  grep -E 'Thread \(' | sed -E 's/.* at ([^+]*)\+.*/\1/' | sort | uniq -c | sort -rn | head -20
CK_FORK=no CK_RUN_CASE=runtime timeout 60 $CS --tool racecheck --print-limit 100000 $T 2>&1 |
  grep -E 'Thread \(|SUMMARY' | sed -E 's/.* at ([^+]*)\+.*/\1/' | sort | uniq -c | sort -rn | head
