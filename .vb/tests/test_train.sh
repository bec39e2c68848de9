#!/usr/bin/env bash
# gcache train end to end on the CPU: a run killed mid-way (SIGKILL) and resumed from its
# last checkpoint logs exactly the losses of the uninterrupted run; config errors name
# file, line and key; the same with LoRA adapters, which checkpoints keep in PEFT layout.
# Usage: test_train.sh GCACHE SOURCE_ROOT
set -u
. "$(dirname "$0")/expect_fail.sh"
export OMP_WAIT_POLICY=passive # no spinning OpenMP threads (2-core CI runs tests side by side)
gcache=$1
root=$2
# GC_TRAIN_DEVICE=cuda (the gpu suite's train_cuda): the same runs on the GPU in bf16
dev=${GC_TRAIN_DEVICE:-cpu}
prec=f32
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
cd "$tmp"
if [ "$dev" = cuda ]; then
  prec=bf16
  if ! "$gcache" bench --model clip-tiny --device cuda --batch 2 --chunk 1 --steps 1 --warmup 0 >probe.log 2>&1; then
    echo "train on cuda: no usable GPU here (skipped): $(tail -1 probe.log)"
    exit 77
  fi
fi
cat >base.yaml <<YAML
model: clip-tiny
tokenizer: $root/tests/fixtures/clip_tokenizer
device: $dev
mixed_precision: $prec
batch_size: 32
gradient_cache_chunk_size: 8
epochs: 3
max_steps: 12
warmup_steps: 2
learning_rate: 0.001
seed: 7
train_data: $tmp/data/train/manifest.tsv
val_data: $tmp/data/val/manifest.tsv
synthetic_train: 160
synthetic_val: 40
workers: 2
log_every: 1
save_every: 4
eval_every: 0
YAML
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"step": \([0-9]*\).*"loss": \([^,]*\),.*/\1 \2/'; }

"$gcache" train base.yaml output_dir="$tmp/ref" >ref.log 2>&1 || { echo "FAIL: reference run"; cat ref.log; exit 1; }
GC_TRAIN_KILL_AT_STEP=10 "$gcache" train base.yaml output_dir="$tmp/crash" >crash.log 2>&1
rc=$?
if [ $rc -ne 137 ]; then echo "FAIL: the run was to be killed at step 10 (exit $rc)"; fail=1; fi
[ "$(cat "$tmp/crash/latest")" = "checkpoint-8" ] || { echo "FAIL: latest checkpoint is '$(cat "$tmp/crash/latest")', not checkpoint-8"; fail=1; }
ls "$tmp/crash" | grep -q '\.tmp$' && { echo "FAIL: a temporary checkpoint was left behind"; fail=1; }
# resumed with recompute off (layernorm outputs and MLP activations kept): the same bits
"$gcache" train base.yaml output_dir="$tmp/crash" recompute=false --resume "$tmp/crash" >resume.log 2>&1 || { echo "FAIL: resume"; cat resume.log; fail=1; }
grep -q "recompute false: layernorm outputs and MLP activations are kept" resume.log || { echo "FAIL: recompute=false not taken"; fail=1; }
if diff <(losses "$tmp/ref") <(losses "$tmp/crash") >diff.txt; then
  echo "ok: killed at step 10, resumed from step 8 with recompute=false: all $(losses "$tmp/ref" | wc -l) losses bit-identical"
else
  echo "FAIL: resumed losses differ from the uninterrupted run:"; cat diff.txt; fail=1
fi
for f in config.json model.safetensors optimizer.safetensors trainer_state.json; do
  [ -f "$tmp/ref/checkpoint-12/$f" ] || { echo "FAIL: checkpoint-12/$f missing"; fail=1; }
done
grep -q '"i2t_recall@1"' "$tmp/ref/metrics.jsonl" || { echo "FAIL: no evaluation in metrics.jsonl"; fail=1; }
[ -s "$tmp/ref/training.svg" ] || { echo "FAIL: no plot"; fail=1; }

# LoRA: the adapters (not in model.safetensors) are saved in PEFT layout in every
# checkpoint and restored on --resume, so a killed and resumed run again matches the
# uninterrupted one bit for bit
lora=(use_lora=true lora_r=4 lora_alpha=8 lora_dropout=0.1 batch_size=16 max_steps=6 save_every=2 val_data=)
"$gcache" train base.yaml "${lora[@]}" output_dir="$tmp/lref" >lref.log 2>&1 || { echo "FAIL: LoRA reference run"; cat lref.log; exit 1; }
GC_TRAIN_KILL_AT_STEP=5 "$gcache" train base.yaml "${lora[@]}" output_dir="$tmp/lcrash" >lcrash.log 2>&1
rc=$?
if [ $rc -ne 137 ]; then echo "FAIL: the LoRA run was to be killed at step 5 (exit $rc)"; fail=1; fi
[ "$(cat "$tmp/lcrash/latest")" = "checkpoint-4" ] || { echo "FAIL: LoRA: latest checkpoint is '$(cat "$tmp/lcrash/latest")', not checkpoint-4"; fail=1; }
"$gcache" train base.yaml "${lora[@]}" output_dir="$tmp/lcrash" --resume "$tmp/lcrash" >lresume.log 2>&1 || { echo "FAIL: LoRA resume"; cat lresume.log; fail=1; }
if [ "$(losses "$tmp/lref" | wc -l)" -eq 6 ] && diff <(losses "$tmp/lref") <(losses "$tmp/lcrash") >diff.txt; then
  echo "ok: LoRA: killed at step 5, resumed from step 4: all 6 losses bit-identical"
else
  echo "FAIL: LoRA: resumed losses differ from the uninterrupted run:"; cat diff.txt; fail=1
fi
header() { head -c 200000 "$1" | tr -c '[:print:]' '\n'; } # the safetensors header's names
for ck in lcrash/checkpoint-4 lcrash/checkpoint-6; do
  for f in adapter_config.json adapter_model.safetensors model.safetensors optimizer.safetensors; do
    [ -f "$tmp/$ck/$f" ] || { echo "FAIL: LoRA: $ck/$f missing"; fail=1; }
  done
  if [ -f "$tmp/$ck/adapter_model.safetensors" ]; then
    names=$(header "$tmp/$ck/adapter_model.safetensors")
    grep -q 'base_model\.model\.text_model\.encoder\.layers\.0\.self_attn\.q_proj\.lora_A\.weight' <<<"$names" &&
      grep -q 'base_model\.model\.vision_model\.encoder\.layers\.0\.self_attn\.out_proj\.lora_B\.weight' <<<"$names" ||
      { echo "FAIL: LoRA: $ck/adapter_model.safetensors lacks PEFT tensor names:"; head -c 400 <<<"$names"; echo; fail=1; }
  fi
  grep -q '"peft_type":[[:space:]]*"LORA"' "$tmp/$ck/adapter_config.json" 2>/dev/null && grep -q '"CLIPModel"' "$tmp/$ck/adapter_config.json" ||
    { echo "FAIL: LoRA: $ck/adapter_config.json is not a PEFT LoRA config of CLIPModel"; fail=1; }
  header "$tmp/$ck/model.safetensors" | grep -q 'lora_' && { echo "FAIL: LoRA: $ck/model.safetensors holds adapters"; fail=1; }
done

# a key of the other trainer is named in a warning; a plain CLIP run and its resume warn about nothing
if grep -h "warning" ref.log resume.log; then echo "FAIL: warnings in a plain CLIP run or its resume"; fail=1; fi
"$gcache" train base.yaml max_steps=1 pool=mean save_every=0 output_dir="$tmp/warn" >warn.log 2>&1
grep -q "'pool' is not used by the CLIP image-caption trainer" warn.log || { echo "FAIL: no warning for a DINOv3-only key"; cat warn.log; fail=1; }
# gemm_plan on the CPU (also in the cuda variant): a warning, and no file written
"$gcache" train base.yaml device=cpu mixed_precision=f32 max_steps=1 save_every=0 gemm_plan="$tmp/plan.txt" output_dir="$tmp/warn2" >warn2.log 2>&1 || { echo "FAIL: gemm_plan on the CPU failed"; cat warn2.log; fail=1; }
grep -q "'gemm_plan' chooses CUDA GEMM algorithms; a CPU run ignores it" warn2.log || { echo "FAIL: no warning for gemm_plan on the CPU"; cat warn2.log; fail=1; }
[ -e "$tmp/plan.txt" ] && { echo "FAIL: a CPU run wrote a gemm plan"; fail=1; }

# configuration errors: one line naming file, line and key; exit 1
printf 'model: clip-tiny\nbatch_sise: 8\n' >typo.yaml
expect_fail "unknown key" "typo.yaml:2: unknown key 'batch_sise'" "$gcache" train typo.yaml
printf 'batch_size: many\n' >type.yaml
expect_fail "wrong type" "type.yaml:1: batch_size: expected an integer" "$gcache" train type.yaml
printf 'batch_size: 8\ngradient_cache_chunk_size: 16\ntrain_data: x.tsv\n' >chunk.yaml
expect_fail "chunk larger than batch" "gradient_cache_chunk_size 16 is larger than batch_size 8" "$gcache" train chunk.yaml
printf 'gradient_cache_chunk_size: 0\n' >zero.yaml
expect_fail "chunk not positive" "zero.yaml:1: gradient_cache_chunk_size" "$gcache" train zero.yaml
printf 'model: [a, b\n' >bad.yaml
expect_fail "malformed YAML" "bad.yaml" "$gcache" train bad.yaml
expect_fail "bad override" "unknown key 'lr'" "$gcache" train base.yaml lr=3
expect_fail "missing data" "nope.tsv" "$gcache" train base.yaml synthetic_train=0 train_data="$tmp/nope.tsv" output_dir="$tmp/o2"
# a LoRA target typo or an empty list fails at start-up (it used to train no adapter, or the default ones)
expect_fail "LoRA target typo" "base.yaml: lora_target_modules: 'qproj' is not a CLIP module (q_proj, k_proj, v_proj, out_proj, fc1, fc2)" \
  "$gcache" train base.yaml use_lora=true lora_target_modules=q_proj,qproj output_dir="$tmp/o3"
expect_fail "LoRA targets empty" "lora_target_modules: no modules given" "$gcache" train base.yaml use_lora=true lora_target_modules= output_dir="$tmp/o3"
# a caption that is not UTF-8 fails before training, naming the manifest line (it used to fail at its batch)
printf 'filepath\ttitle\nimages/000000.png\ta red circle\nimages/000001.png\t\xc3\n' >"$tmp/data/train/badutf8.tsv"
expect_fail "caption not UTF-8" "badutf8.tsv:3: the caption is not valid UTF-8: byte 0 is 0xC3" \
  "$gcache" train base.yaml synthetic_train=0 train_data="$tmp/data/train/badutf8.tsv" batch_size=2 gradient_cache_chunk_size=1 output_dir="$tmp/o4"
expect_fail "one column for image and caption" "csv_img_key and csv_caption_key are both 'filepath'" \
  "$gcache" train base.yaml csv_caption_key=filepath output_dir="$tmp/o5"
exit $fail
