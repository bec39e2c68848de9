#!/usr/bin/env bash
# the last run of session 4 (2026-11-29): build, the whole gpu suite, then B/32 4096/256 ours and PyTorch side by side, B/16 128/64 ours
. tools/bench/build.sh
timeout 150 meson test -C build-gpu --suite gpu --num-processes 4 >"$OUT/gpu_tests.log" 2>&1
grep -E "^ *[0-9]+/[0-9]+ |^Ok:|^Fail:|^Timeout:" "$OUT/gpu_tests.log" | sort -u | tee "$OUT/gpu-tests.txt"
grep -hE ":F:|:E:" build-gpu/meson-logs/testlog.txt | sort -u | head -20 | tee -a "$OUT/gpu-tests.txt"
echo "tests done $(( $(date +%s) - t0 )) s"
G=./build-gpu/tools/gcache
for r in "clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1" "clip-vit-b16 --batch 128 --chunk 64"; do
  set -- $r; m=$1; shift
  timeout 60 $G bench --model $m "$@" 2>&1 | grep -E "step |embed|replay|peak|pairs|TFLOP|^{" | sed "s|^|[$m $*] |" | tee -a "$OUT/ours.txt"
done
timeout 80 python3 - <<'PY' 2>&1 | grep -v -i warn | tee "$OUT/torch.txt"
import sys, json
sys.path.insert(0, ".bench")
import torch_baseline as tb
tb.run("clip-vit-b32", lambda lora, ckpt: tb.build_clip(32, lora, ckpt), "gc", 4096, 256, steps=3, warm=1)
PY
echo "all took $(( $(date +%s) - t0 )) s"
