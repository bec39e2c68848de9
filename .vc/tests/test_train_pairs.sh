#!/usr/bin/env bash
# gcache train with a DINOv3 (tools/train_pairs.c) end to end on the CPU, on synthetic
# pair sets the trainer renders itself: both pair formats; a run killed mid-way
# (SIGKILL) and resumed logs exactly the losses and recalls of the uninterrupted run,
# across an epoch boundary and with unreadable images in the data; the batches do not
# depend on the number of loader threads; the checkpoint loads (gcache embed, and as the
# model of a new run); LoRA resumes; configuration errors are one line naming the
# problem. Usage: test_train_pairs.sh GCACHE
set -u
. "$(dirname "$0")/expect_fail.sh"
# the tiny model's ops take microseconds: OpenMP threads that spin between them only take
# the cores from the loader threads and the tests running beside this one
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
gcache=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
cd "$tmp"
cat >base.yaml <<YAML
model: dinov3-tiny
device: cpu
pair_format: pairs
csv_img_key: filepath
csv_img_b_key: filepath_b
batch_size: 16
gradient_cache_chunk_size: 8
epochs: 3
max_steps: 10
warmup_steps: 2
learning_rate: 0.002
temperature: 0.1
augment: true
seed: 7
train_data: $tmp/data/pairs_train.tsv
val_data: $tmp/data/pairs_val.tsv
synthetic_train: 96
synthetic_val: 32
workers: 2
log_every: 1
save_every: 4
eval_every: 5
YAML
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"step": \([0-9]*\).*"loss": \([^,]*\),.*/\1 \2/'; }
evals() { grep '"i2i_recall@1"' "$1/metrics.jsonl"; }
run() { local log=$1; shift; "$gcache" train "$@" >"$log" 2>&1 || { echo "FAIL: gcache train $* (exit $?):"; tail -5 "$log"; fail=1; }; }

# renders the data and learns (no augmentation: the tiny model at 32 px learns slowly through crops)
run warm.log base.yaml output_dir="$tmp/warm" augment=false eval_every=0 save_every=0
mean() { losses "$1" | sed -n "$2" | awk '{ s += $2 } END { printf "%.4f", s / NR }'; }
first=$(mean warm 1,3p); last=$(mean warm 8,10p)
if awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.3) }'; then echo "ok: loss falls: mean of steps 1-3 $first, of steps 8-10 $last"
else echo "FAIL: loss did not fall: mean of steps 1-3 $first, of steps 8-10 $last"; fail=1; fi
# one unreadable image in each split: its pair must be dropped whole
head -c 100 data/images/pairs_train_000005_b.png >x && mv x data/images/pairs_train_000005_b.png
head -c 100 data/images/pairs_val_000003_b.png >x && mv x data/images/pairs_val_000003_b.png

# ---- pairs: the reference run, and one killed at step 7 (after the checkpoint of step 4)
run ref.log base.yaml output_dir="$tmp/ref"
GC_TRAIN_KILL_AT_STEP=7 "$gcache" train base.yaml output_dir="$tmp/crash" >crash.log 2>&1
rc=$?
if [ $rc -ne 137 ]; then echo "FAIL: the run was to be killed at step 7 (exit $rc)"; tail -3 crash.log; fail=1; fi
[ "$(cat "$tmp/crash/latest" 2>/dev/null)" = "checkpoint-4" ] || { echo "FAIL: latest is not checkpoint-4"; fail=1; }
ls "$tmp/crash" | grep -q '\.tmp$' && { echo "FAIL: a temporary checkpoint was left behind"; fail=1; }
run resume.log base.yaml output_dir="$tmp/crash" --resume "$tmp/crash"
if [ "$(losses ref | wc -l)" -eq 10 ] && diff <(losses ref) <(losses crash) >diff.txt && diff <(evals ref) <(evals crash) >>diff.txt; then
  echo "ok: pairs: killed at step 7, resumed from step 4 (epoch 0 ends at step 5: 95 readable pairs): 10 losses and $(evals ref | wc -l) evaluations bit-identical"
else
  echo "FAIL: resumed run differs from the uninterrupted one:"; cat diff.txt; fail=1
fi
for f in config.json model.safetensors optimizer.safetensors trainer_state.json train_config.yaml; do
  [ -f "ref/checkpoint-10/$f" ] || { echo "FAIL: checkpoint-10/$f missing"; fail=1; }
done
[ -s ref/training.svg ] || { echo "FAIL: no plot"; fail=1; }
grep -q '"model_type":[[:space:]]*"dinov3_vit"' ref/checkpoint-10/config.json || { echo "FAIL: config.json is not a DINOv3 config"; fail=1; }
# a run of epochs (no max_steps) ends with its last epoch's data: 95 readable pairs make 5
# batches of 16, one short of the 6 planned from the 96 rows, and no step comes from epoch 1
run epoch.log base.yaml output_dir="$tmp/epoch" epochs=1 max_steps=0 save_every=0 eval_every=0 val_data= augment=false
n_epoch=$(losses epoch | wc -l)
if [ "$n_epoch" -eq 5 ] && ! grep '"loss"' epoch/metrics.jsonl | grep -q '"epoch": 1'; then
  echo "ok: epochs=1 with an unreadable image: 5 steps, all of epoch 0"
else echo "FAIL: epochs=1 with an unreadable image ran $n_epoch steps:"; grep '"loss"' epoch/metrics.jsonl | tail -2; fail=1; fi
final=$(evals ref | tail -1)
# 31 of 32 validation pairs are readable; a dropped view that shifted the other would ruin the recall
if echo "$final" | grep -q '"queries": 31}' && echo "$final" | grep -q '"b2a_recall@10"' &&
   awk -v r="$(echo "$final" | sed 's/.*"i2i_recall@5": \([^,]*\),.*/\1/')" 'BEGIN { exit !(r >= 0.5) }'; then
  echo "ok: evaluation: $final"
else echo "FAIL: evaluation line: $final"; fail=1; fi
grep -q 'skipped [1-9][0-9]* pairs with unreadable images; first: pair 5: .*pairs_train_000005_b.png' ref.log ||
  { echo "FAIL: the unreadable training image was not reported:"; tail -3 ref.log; fail=1; }
n_ref=$(grep -o '"skipped_pairs":[[:space:]]*[0-9]*' ref/checkpoint-10/trainer_state.json | grep -o '[0-9]*$')
n_crash=$(grep -o '"skipped_pairs":[[:space:]]*[0-9]*' crash/checkpoint-10/trainer_state.json | grep -o '[0-9]*$')
[ -n "$n_ref" ] && [ "$n_ref" -ge 1 ] && [ "$n_ref" = "$n_crash" ] ||
  { echo "FAIL: skipped pairs: $n_ref in the reference run, $n_crash after the resume"; fail=1; }

# ---- the checkpoint loads: gcache embed, and as the model of a new run (config.json says dinov3_vit)
h='{"pixel_values":{"dtype":"F32","shape":[2,3,32,32],"data_offsets":[0,24576]}}'
n=${#h}
{ printf "$(printf '\\x%02x' $((n & 255)) $((n >> 8 & 255)) 0 0 0 0 0 0)"; printf '%s' "$h"; head -c 24576 /dev/zero; } >px.safetensors
if "$gcache" embed --model ref/checkpoint-10 --inputs px.safetensors --out emb.safetensors >embed.log 2>&1 &&
   grep -q embeds_a emb.safetensors; then echo "ok: gcache embed loads the checkpoint"
else echo "FAIL: gcache embed on the checkpoint:"; cat embed.log; fail=1; fi
run tune.log base.yaml model="$tmp/ref/checkpoint-10" output_dir="$tmp/tune" max_steps=2 val_data=
grep -q "ref/checkpoint-10 (DINOv3" tune.log && echo "ok: a checkpoint directory as the model trains on" ||
  { echo "FAIL: training from the checkpoint"; fail=1; }

# ---- labels: positives drawn from the same label; same batches with 1 and 3 loader threads
lab=(pair_format=labels csv_label_key=label train_data="$tmp/data/lab_train.tsv" val_data="$tmp/data/lab_val.tsv"
     synthetic_train=96 synthetic_val=48 max_steps=6 eval_every=0 save_every=0)
run lab0.log base.yaml "${lab[@]}" output_dir="$tmp/lab0" max_steps=1
head -c 100 data/images/lab_train_000002.png >x && mv x data/images/lab_train_000002.png
run lab1.log base.yaml "${lab[@]}" output_dir="$tmp/lab1" workers=1
run lab3.log base.yaml "${lab[@]}" output_dir="$tmp/lab3" workers=3
if [ "$(losses lab1 | wc -l)" -eq 6 ] && diff <(losses lab1) <(losses lab3) >/dev/null && diff <(evals lab1) <(evals lab3) >/dev/null; then
  echo "ok: labels: 6 losses (a whole epoch) bit-identical with 1 and 3 loader threads"
else echo "FAIL: labels: the loader's thread count changed the batches"; fail=1; fi
grep -q 'in [0-9]* labels ([1-9][0-9]* with one image, paired with itself)' lab1.log || { echo "FAIL: no label summary"; head -1 lab1.log; fail=1; }
grep -q 'skipped [1-9][0-9]* pairs' lab1.log || { echo "FAIL: labels: unreadable image not reported"; fail=1; }
evals lab1 | grep -q '"i2i_recall@10": [0-9.]*, "queries": [1-9]' && echo "ok: labels evaluation: $(evals lab1)" ||
  { echo "FAIL: labels evaluation: $(evals lab1)"; fail=1; }

# ---- LoRA: adapters saved in PEFT's layout beside the model and restored on resume
lora=(use_lora=true lora_r=4 lora_alpha=8 max_steps=3 save_every=2 eval_every=0 val_data=)
GC_TRAIN_KILL_AT_STEP=3 "$gcache" train base.yaml "${lora[@]}" output_dir="$tmp/lora" >lora.log 2>&1
cp lora/metrics.jsonl lora_killed.jsonl
run lora2.log base.yaml "${lora[@]}" output_dir="$tmp/lora" --resume "$tmp/lora"
a=$(grep '"step": 3,' lora_killed.jsonl | sed 's/.*"loss": \([^,]*\),.*/\1/')
b=$(grep '"step": 3,' lora/metrics.jsonl | sed 's/.*"loss": \([^,]*\),.*/\1/')
if [ -f lora/checkpoint-2/adapter_model.safetensors ] && [ -f lora/checkpoint-2/adapter_config.json ] && [ -n "$a" ] && [ "$a" = "$b" ]; then
  echo "ok: LoRA: adapter saved, step 3 after resuming from step 2 gives the same loss ($a)"
else echo "FAIL: LoRA resume: step 3 loss '$a' before the kill, '$b' after the resume"; fail=1; fi

# ---- configuration errors: one line naming the problem; exit 1
printf 'model: dinov3-tiny\npair_format: triplets\n' >fmt.yaml
expect_fail "unknown pair format" "fmt.yaml:2: pair_format: 'triplets' is not one of pairs|labels" "$gcache" train fmt.yaml
printf 'model: dinov3-tiny\npool: max\n' >pool.yaml
expect_fail "unknown pool" "pool.yaml:2: pool: 'max' is not one of cls|mean" "$gcache" train pool.yaml
expect_fail "augment not a boolean" "command line: augment: expected true or false" "$gcache" train base.yaml augment=maybe
expect_fail "unknown architecture" "model: 'dinov3-huge' is neither a checkpoint directory nor a known architecture" \
  "$gcache" train base.yaml model=dinov3-huge output_dir="$tmp/e1"
expect_fail "missing second image column" 'no column "path_b" in the header' \
  "$gcache" train base.yaml csv_img_b_key=path_b synthetic_train=0 synthetic_val=0 output_dir="$tmp/e2"
expect_fail "one image column twice" "csv_img_key and csv_img_b_key are both 'filepath'" \
  "$gcache" train base.yaml csv_img_b_key=filepath synthetic_train=0 synthetic_val=0 output_dir="$tmp/e3"
expect_fail "pairs from WebDataset" "pair_format pairs reads a CSV/TSV manifest" \
  "$gcache" train base.yaml data_format=webdataset synthetic_train=0 synthetic_val=0 train_data="$tmp/x.tar" output_dir="$tmp/e4"
expect_fail "missing label column" 'no column "class_id" in the header' \
  "$gcache" train base.yaml "${lab[@]}" csv_label_key=class_id synthetic_train=0 output_dir="$tmp/e5"
expect_fail "one column for image and label" "csv_img_key and csv_label_key are both 'filepath'" \
  "$gcache" train base.yaml "${lab[@]}" csv_label_key=filepath synthetic_train=0 output_dir="$tmp/e10"
expect_fail "batch larger than the data" "96 pairs, fewer than batch_size 128" \
  "$gcache" train base.yaml batch_size=128 output_dir="$tmp/e6"
expect_fail "LoRA target of CLIP" "lora_target_modules: 'out_proj' is not a DINOv3 module" \
  "$gcache" train base.yaml use_lora=true lora_target_modules=q_proj,out_proj output_dir="$tmp/e7"
expect_fail "resume with the other pair format" "trained with pair_format pairs, the configuration says labels" \
  "$gcache" train base.yaml "${lab[@]}" output_dir="$tmp/e8" --resume "$tmp/ref"
expect_fail "synthetic data over a foreign manifest" "was not written by the synthetic pair generator" \
  "$gcache" train base.yaml train_data="$tmp/base.yaml" output_dir="$tmp/e9"
exit $fail
