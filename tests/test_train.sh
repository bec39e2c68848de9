#!/usr/bin/env bash
# gcache train end to end on the CPU: a run killed mid-way (SIGKILL) and resumed from its
# last checkpoint logs exactly the losses of the uninterrupted run; config errors name
# file, line and key. Usage: test_train.sh GCACHE SOURCE_ROOT
set -u
gcache=$1
root=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
cd "$tmp"
cat >base.yaml <<YAML
model: clip-tiny
tokenizer: $root/tests/fixtures/clip_tokenizer
device: cpu
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
"$gcache" train base.yaml output_dir="$tmp/crash" --resume "$tmp/crash" >resume.log 2>&1 || { echo "FAIL: resume"; cat resume.log; fail=1; }
if diff <(losses "$tmp/ref") <(losses "$tmp/crash") >diff.txt; then
  echo "ok: killed at step 10, resumed from step 8: all $(losses "$tmp/ref" | wc -l) losses bit-identical"
else
  echo "FAIL: resumed losses differ from the uninterrupted run:"; cat diff.txt; fail=1
fi
for f in config.json model.safetensors optimizer.safetensors trainer_state.json; do
  [ -f "$tmp/ref/checkpoint-12/$f" ] || { echo "FAIL: checkpoint-12/$f missing"; fail=1; }
done
grep -q '"i2t_recall@1"' "$tmp/ref/metrics.jsonl" || { echo "FAIL: no evaluation in metrics.jsonl"; fail=1; }
[ -s "$tmp/ref/training.svg" ] || { echo "FAIL: no plot"; fail=1; }

# configuration errors: one line naming file, line and key; exit 1
expect() {
  local what=$1 pat=$2
  shift 2
  "$@" >out.txt 2>err.txt
  local rc=$?
  if [ $rc -ne 1 ] || [ "$(wc -l <err.txt)" -ne 1 ] || ! grep -q -- "$pat" err.txt; then
    echo "FAIL: $what (exit $rc):"; cat err.txt; fail=1
  else echo "ok: $what: $(cat err.txt)"; fi
}
printf 'model: clip-tiny\nbatch_sise: 8\n' >typo.yaml
expect "unknown key" "typo.yaml:2: unknown key 'batch_sise'" "$gcache" train typo.yaml
printf 'batch_size: many\n' >type.yaml
expect "wrong type" "type.yaml:1: batch_size: expected an integer" "$gcache" train type.yaml
printf 'batch_size: 8\ngradient_cache_chunk_size: 16\ntrain_data: x.tsv\n' >chunk.yaml
expect "chunk larger than batch" "gradient_cache_chunk_size 16 is larger than batch_size 8" "$gcache" train chunk.yaml
printf 'gradient_cache_chunk_size: 0\n' >zero.yaml
expect "chunk not positive" "zero.yaml:1: gradient_cache_chunk_size" "$gcache" train zero.yaml
printf 'model: [a, b\n' >bad.yaml
expect "malformed YAML" "bad.yaml" "$gcache" train bad.yaml
expect "bad override" "unknown key 'lr'" "$gcache" train base.yaml lr=3
expect "missing data" "nope.tsv" "$gcache" train base.yaml synthetic_train=0 train_data="$tmp/nope.tsv" output_dir="$tmp/o2"
exit $fail
