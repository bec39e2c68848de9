#!/usr/bin/env bash
# session 6: where the wall time goes beyond the kernels' own (clocks and power under a
# long run), a per-kernel profile of a DINOv3 step, and ncu's view of the flash kernels
. tools/bench/build.sh
G=./build-gpu/tools/gcache
nvidia-smi -q -d CLOCK,POWER | grep -E "Graphics|SM  |Max|Power Limit|Default|Current" | head -20
$G bench --model clip-vit-b16 --batch 512 --chunk 256 --steps 3 --warmup 1 2>&1 | grep -E "step|embed|replay|TFLOP"
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv -lms 250 >"$OUT/smi.csv" 2>&1 &
smi=$!
$G bench --model clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 2>&1 | grep -E "step|embed|replay|TFLOP"
kill $smi
python3 - "$OUT/smi.csv" <<'PY'
import sys, csv, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0][:2] == '20']
clk = [int(r[1].split()[0]) for r in rows]; pw = [float(r[3].split()[0]) for r in rows]
busy = [(c, p, r[5].strip()) for c, p, r in zip(clk, pw, rows) if p > 300]
print(f"{len(rows)} samples; under load ({len(busy)}): sm clock min {min(b[0] for b in busy)} median {sorted(b[0] for b in busy)[len(busy)//2]} max {max(b[0] for b in busy)} MHz; power median {sorted(b[1] for b in busy)[len(busy)//2]} W max {max(b[1] for b in busy)}")
print(collections.Counter(b[2] for b in busy).most_common(5))
PY
echo "benches done $(( $(date +%s) - t0 )) s"
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv $G bench --model dinov3-vit-b16 --batch 128 --chunk 64 --steps 1 --warmup 0 >"$OUT/dino.csv" 2>"$OUT/dino.log"
python3 tools/bench/ncu_agg.py "$OUT/dino.csv" >"$OUT/dino-sum.txt" 2>&1; head -42 "$OUT/dino-sum.txt"; gzip -f "$OUT/dino.csv"
echo "dino profile done $(( $(date +%s) - t0 )) s"
CK_FORK=no CK_RUN_CASE=flash_bench timeout 150 ncu --clock-control none --kernel-name regex:flash_ --launch-count 3 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy \
  --section LaunchStats --section WarpStateStats --section InstructionStats build-gpu/tests/test_gpu >"$OUT/flash-ncu.txt" 2>&1
grep -E "flash_|Duration|Throughput|Pipe|Issue|Occupancy|Registers|Shared Memory Config|Warp Cycles|Stall|Block Limit|Executed Ipc|Bank" "$OUT/flash-ncu.txt" | head -120
echo "all took $(( $(date +%s) - t0 )) s"
