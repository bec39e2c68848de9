#!/usr/bin/env bash
# On the GPU machine: build with CUDA, run the gpu suite (every CUDA op against its
# CPU reference; the HF fixtures in f32 and bf16 on the GPU), then optional benchmarks.
# Usage: tools/device_check.sh [tests|fixtures|bench ARGS|full] ; logs under $OUT (or ./out)
# full: flash kernels first (if they fail, later steps fall back to GC_ATTN_IMPL=gemm and
# say so), the whole gpu suite, flash vs gemm timing, then tools/bench_compare.sh.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
what=${1:-all}
. tools/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
[ -f build-gpu/build.ninja ] || meson setup build-gpu -Dcuda=enabled >"$OUT/setup.log" 2>&1 || { tail -30 "$OUT/setup.log"; exit 1; }
if ! ninja -C build-gpu >"$OUT/build.log" 2>&1; then grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; fi
echo "build ok"
if [ "$what" = tests ] || [ "$what" = all ]; then
  meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 3 >"$OUT/gpu_tests.log" 2>&1
  grep -E "^ *[0-9]+/[0-9]+ " "$OUT/gpu_tests.log"
  grep -hE "rel err|worst|FAIL|fail|Assertion|error" build-gpu/meson-logs/testlog.txt | grep -vE "rel err [0-9.]+e-0[5-9]|rel err 0.00e" | head -60
  cp build-gpu/meson-logs/testlog.txt "$OUT/testlog.txt"
fi
if [ "$what" = fixtures ]; then
  meson test -C build-gpu --print-errorlogs clip_cuda_f32 clip_cuda_bf16 dinov3_cuda_f32 dinov3_cuda_bf16 lora_cuda_f32 lora_cuda_bf16 >"$OUT/fixture_tests.log" 2>&1
  grep -E "^ *[0-9]+/[0-9]+ " "$OUT/fixture_tests.log"
  grep -hE "worst|Assert|fail" build-gpu/meson-logs/testlog.txt | head -60
  cp build-gpu/meson-logs/testlog.txt "$OUT/testlog.txt"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  shift || true
  ./build-gpu/tools/gcache bench "$@" 2>&1 | tee -a "$OUT/bench.log"
fi
if [ "$what" = full ]; then
  t0=$(date +%s)
  if CK_FORK=no CK_RUN_CASE=flash timeout 120 build-gpu/tests/test_gpu >"$OUT/flash.log" 2>&1; then
    echo "flash kernels: PASS"
  else
    echo "flash kernels: FAIL -> GC_ATTN_IMPL=gemm for the rest"; export GC_ATTN_IMPL=gemm
    grep -E "fail|err|Assert" "$OUT/flash.log" | head -20
  fi
  timeout 240 meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 4 >"$OUT/gpu_tests.log" 2>&1
  grep -E "^ *[0-9]+/[0-9]+ " "$OUT/gpu_tests.log"
  cp build-gpu/meson-logs/testlog.txt "$OUT/testlog.txt"
  grep -hE "worst|Assert|: F:|: E:" "$OUT/testlog.txt" | sort -u | head -50 >"$OUT/worst.txt"
  echo "tests took $(( $(date +%s) - t0 )) s"
  CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 build-gpu/tests/test_gpu 2>&1 | grep -vE "^Running|^100%" | tee "$OUT/flash_bench.log"
  timeout ${BENCH_TIMEOUT:-300} tools/bench_compare.sh
  echo "all took $(( $(date +%s) - t0 )) s"
fi
