# Sourced by the device-run scripts here, after build.sh: the whole gpu suite and the flash
# timing, summarised into $OUT/gpu-tests.txt (the full log in $OUT/gpu_tests.log).
{
timeout 330 meson test -C build-gpu --suite gpu --print-errorlogs --num-processes 4 >"$OUT/gpu_tests.log" 2>&1
grep -E "^ *[0-9]+/[0-9]+ " "$OUT/gpu_tests.log" | sort -u
grep -hE ":F:|:E:|FAIL" build-gpu/meson-logs/testlog.txt | sort -u | head -30
CK_FORK=no CK_RUN_CASE=flash_bench timeout 60 build-gpu/tests/test_gpu 2>&1 | grep -E "attention|FAIL"
} 2>&1 | tee "$OUT/gpu-tests.txt"
echo "tests done $(( $(date +%s) - t0 )) s"
