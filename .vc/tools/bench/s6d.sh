#!/usr/bin/env bash
# session 6's table run: build, the whole gpu suite (after the last kernel change), the flash
# timing, our rows of tools/bench_compare.sh with cuBLASLt's heuristic, the same rows (less
# host pixels) with a GEMM plan file, B/32 and DINOv3 with the plan and --no-recompute,
# then PyTorch's rows; with the SM clock and power sampled through our rows
. tools/bench/build.sh
G=./build-gpu/tools/gcache
. tools/bench/suite.sh
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader -lms 500 >"$OUT/smi.csv" 2>&1 &
smi=$!
SKIP_TORCH=1 timeout 230 tools/bench_compare.sh >"$OUT/bench-heuristic.txt" 2>&1
grep -E "gcache bench|^ *step |pairs/s|peak memory" "$OUT/bench-heuristic.txt"
echo "heuristic rows done $(( $(date +%s) - t0 )) s"
: >"$OUT/ours-plan.jsonl"
for r in "clip-vit-b16 --batch 128 --chunk 64" "clip-vit-b16 --batch 128 --chunk 128 --no-cache" \
         "clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1" "clip-vit-b16 --batch 128 --chunk 64 --checkpointing --lora 16" \
         "clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1" "dinov3-vit-b16 --batch 256 --chunk 64" \
         "clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1 --no-recompute" "dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute"; do
  $G bench --model $r --gemm-plan "$OUT/h200.gemmplan" >/tmp/one.txt 2>&1
  grep -v '^{' /tmp/one.txt >>"$OUT/bench-plan.txt"; grep '^{' /tmp/one.txt >>"$OUT/ours-plan.jsonl"
  grep -E "gcache bench|^ *step |pairs/s|peak memory" /tmp/one.txt
done
kill $smi
python3 - "$OUT/smi.csv" <<'PY'
import sys, csv
def num(x):
    try: return float(x.split()[0])
    except (ValueError, IndexError): return 0.0
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) >= 4 and r[0][:2] == '20']
busy = sorted((int(num(r[1])), num(r[2])) for r in rows if num(r[2]) > 300)
if busy:
    c = sorted(b[0] for b in busy); p = sorted(b[1] for b in busy)
    print(f"under load ({len(busy)} of {len(rows)} samples): SM clock median {c[len(c)//2]} MHz (min {c[0]}, max {c[-1]}); power median {p[len(p)//2]:.0f} W, max {p[-1]:.0f} W")
PY
echo "plan rows done $(( $(date +%s) - t0 )) s"
SKIP_OURS=1 timeout 150 tools/bench_compare.sh >"$OUT/bench-torch.txt" 2>&1; tail -8 "$OUT/bench-torch.txt"
echo "all took $(( $(date +%s) - t0 )) s"
