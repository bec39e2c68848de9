#!/usr/bin/env bash
# Side by side on one GPU, in one run: gcache bench and the PyTorch + GradCache baseline
# (../shared/bench/torch_baseline.py, copied to .bench/) for the rows of docs/BENCHMARKS.md.
# Usage on the GPU machine: tools/bench_compare.sh  (needs build-gpu/ and python3 with torch,
# transformers, peft). Writes $OUT/ours.jsonl and $OUT/torch.jsonl and prints both.
# GEMM_PLAN=FILE: our rows with --gemm-plan FILE, into $OUT/ours-plan.jsonl; SKIP_OURS=1 /
# SKIP_TORCH=1 leave a side out; TORCH_ONLY=MODEL runs PyTorch's rows of that model alone.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
g=./build-gpu/tools/gcache
rows=(
  "clip-vit-b16 --batch 128 --chunk 64"
  "clip-vit-b16 --batch 128 --chunk 128 --no-cache"
  "clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1"
  "clip-vit-b16 --batch 128 --chunk 64 --checkpointing --lora 16"
  "clip-vit-b32 --batch 4096 --chunk 256 --steps 3 --warmup 1"
  "dinov3-vit-b16 --batch 256 --chunk 64"
  "clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host"
)
# The two rows whose time targets are open, in the configurations that spend what their
# memory targets leave (a plan file timed on first use, in $OUT; the activations kept where
# memory allows). Not with GEMM_PLAN: those rows carry a plan of their own.
[ -n "${GEMM_PLAN:-}" ] || rows+=(
  "dinov3-vit-b16 --batch 256 --chunk 64 --no-recompute --gemm-plan $OUT/best.gemmplan"
  "clip-vit-b16 --batch 4096 --chunk 256 --steps 3 --warmup 1 --pixels host --gemm-plan $OUT/best.gemmplan"
)
plan=() js="$OUT/ours.jsonl"
[ -n "${GEMM_PLAN:-}" ] && plan=(--gemm-plan "$GEMM_PLAN") js="$OUT/ours-plan.jsonl"
[ "${SKIP_OURS:-0}" = 1 ] || : >"$js"
for r in "${rows[@]}"; do
  [ "${SKIP_OURS:-0}" = 1 ] && break
  set -- $r
  m=$1; shift
  one=${TMPDIR:-/tmp}/gc_bench_one.txt
  "$g" bench --model "$m" "$@" "${plan[@]}" >"$one" 2>&1
  grep -v '^{' "$one" | sed 's/^/  /'
  grep '^{' "$one" >>"$js" || echo "{\"model\":\"$m\",\"args\":\"$*\",\"error\":\"$(tail -1 "$one")\"}" >>"$js"
done
[ "${SKIP_TORCH:-0}" = 1 ] && exit 0
python3 - <<'PY' 2>&1 | grep -v -i warn
import os, sys, json
sys.path.insert(0, ".bench")
import torch_baseline as tb
b16 = lambda lora, ckpt: tb.build_clip(16, lora, ckpt)
b32 = lambda lora, ckpt: tb.build_clip(32, lora, ckpt)
plans = [("clip-vit-b16", b16, "gc", 128, 64), ("clip-vit-b16", b16, "full", 128, 128),
         ("clip-vit-b16", b16, "gc", 4096, 256), ("clip-vit-b16", b16, "gc+ckpt+lora", 128, 64),
         ("clip-vit-b32", b32, "gc", 4096, 256), ("dinov3-vit-b16", tb.build_dinov3, "gc", 256, 64)]
only = os.environ.get("TORCH_ONLY", "")  # a model name: that model's rows alone
plans = [p for p in plans if only in p[0]]
print("torch", tb.torch.__version__, tb.torch.cuda.get_device_name(), flush=True)
print(json.dumps({"bf16_matmul_TFLOPs": round(tb.matmul_ceiling(), 1)}), flush=True)
for p in plans:
    big = p[3] >= 4096  # 3 s steps: fewer of them
    tb.run(*p, steps=3 if big else 5, warm=1 if big else 2)
with open(os.path.join(os.environ.get("OUT", "."), "torch.jsonl"), "w") as f:
    for r in tb.RESULTS: f.write(json.dumps(r) + "\n")
PY
