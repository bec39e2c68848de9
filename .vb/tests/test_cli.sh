#!/usr/bin/env bash
# gcache on bad input: every failure is one line that names the file or key, exit 1,
# never a crash. And a good run of grad/embed on a fixture. Usage: test_cli.sh GCACHE FIXTURES
set -u
gcache=$1
fx=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

. "$(dirname "$0")/expect_fail.sh"

m=$fx/clip_quickgelu_legacy
expect_fail "missing model dir" "$tmp/nope" "$gcache" grad --model "$tmp/nope" --inputs "$m/inputs.safetensors" --out "$tmp/o"
expect_fail "missing inputs" "$tmp/none.safetensors" "$gcache" grad --model "$m" --inputs "$tmp/none.safetensors" --out "$tmp/o"
printf 'garbage' >"$tmp/bad.safetensors"
expect_fail "corrupt inputs" "bad.safetensors" "$gcache" grad --model "$m" --inputs "$tmp/bad.safetensors" --out "$tmp/o"
expect_fail "non-positive chunk" "chunk" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/o" --chunk 0
expect_fail "bad dtype" "dtype" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/o" --dtype f8
expect_fail "unknown option" "unknown option" "$gcache" grad --model "$m" --frobnicate
expect_fail "empty --out" "--out: an empty value" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out ""
expect_fail "unknown command" "unknown command" "$gcache" frobnicate
expect_fail "bad GC_GEMM_SM90" "GC_GEMM_SM90=bogus: expected one of off, act, all" env GC_GEMM_SM90=bogus "$gcache" grad --model "$m"
expect_fail "bad GC_ATTN_IMPL" "GC_ATTN_IMPL=fast" env GC_ATTN_IMPL=fast "$gcache" grad --model "$m"
expect_fail "bad GC_GEMM_SM90_CLUSTER" "GC_GEMM_SM90_CLUSTER=4: expected one of 1, 2" env GC_GEMM_SM90_CLUSTER=4 "$gcache" grad --model "$m"
expect_fail "bad GC_GEMM_SM90_BN" "GC_GEMM_SM90_BN=64: expected one of auto, 128, 256" env GC_GEMM_SM90_BN=64 "$gcache" grad --model "$m"
mkdir -p "$tmp/badcfg"
cp "$m/model.safetensors" "$tmp/badcfg/"
echo '{"text_config": {"hidden_size": 33}}' >"$tmp/badcfg/config.json"
expect_fail "config does not fit checkpoint" "badcfg" "$gcache" grad --model "$tmp/badcfg" --inputs "$m/inputs.safetensors" --out "$tmp/o"
echo '{"vision_config": ' >"$tmp/badcfg/config.json"
expect_fail "malformed config.json" "config.json" "$gcache" grad --model "$tmp/badcfg" --inputs "$m/inputs.safetensors" --out "$tmp/o"
if [ -e "$fx/clip_gelu_eos/inputs.safetensors" ]; then
  expect_fail "inputs of another model" "pixel_values" "$gcache" grad --model "$m" --inputs "$fx/clip_b16_shape/inputs.safetensors" --out "$tmp/o"
fi
expect_fail "output dir missing" "$tmp/no/such/dir" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/no/such/dir/o.safetensors"
# integers are range-checked, not wrapped, clamped or truncated
expect_fail "negative seed" "--seed -1" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/o" --seed -1
expect_fail "seed past INT64_MAX" "--seed.*out of range" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/o" --seed 99999999999999999999
expect_fail "chunk past INT64_MAX" "--chunk.*out of range" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/o" --chunk 99999999999999999999
expect_fail "temperature on a CLIP model" "--temperature.*CLIP" "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/o" --temperature 0.05
expect_fail "temperature for embed" "--temperature" "$gcache" embed --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/o" --temperature 0.05

# bench: bounded, checked flags (the errors come before any model is built)
bench=("$gcache" bench --device cpu --dtype f32 --model clip-tiny --batch 4 --chunk 2)
expect_fail "bench huge steps" "--steps 100000000000: outside" "${bench[@]}" --steps 100000000000
expect_fail "bench huge warmup" "--warmup 100000000000: outside" "${bench[@]}" --steps 1 --warmup 100000000000
expect_fail "bench steps past INT64_MAX" "--steps" "${bench[@]}" --steps 99999999999999999999
expect_fail "bench lora past 32 bits" "--lora 4294967297: outside" "${bench[@]}" --steps 1 --lora 4294967297
expect_fail "bench lora over the cap" "--lora 1000000: outside" "${bench[@]}" --steps 1 --lora 1000000
expect_fail "bench unknown model lists all" "clip-tiny.*dinov3-tiny" "$gcache" bench --device cpu --dtype f32 --model nope

# train configs: checked before anything is loaded
printf 'batch_size: 8\nbatch_size: 16\n' >"$tmp/dup.yaml"
expect_fail "duplicate YAML key" "dup.yaml:2: key 'batch_size' given twice" "$gcache" train "$tmp/dup.yaml"
printf 'batch_size: 8\n---\nbatch_size: banana\n' >"$tmp/docs.yaml"
expect_fail "second YAML document" "docs.yaml:2: a second YAML document" "$gcache" train "$tmp/docs.yaml"
printf 'batch_size: %s%s\n' "$(printf '%.0s[' {1..100})" "$(printf '%.0s]' {1..100})" >"$tmp/deep.yaml"
expect_fail "deeply nested YAML" "deep.yaml:1: nested deeper than 64" "$gcache" train "$tmp/deep.yaml"
printf 'lora_target_modules: [%sq_proj]\n' "$(printf '%.0sq_proj, ' {1..10000})" >"$tmp/wide.yaml"
expect_fail "YAML with too many values" "wide.yaml:1: more than 10000 values" "$gcache" train "$tmp/wide.yaml"
mkdir -p "$tmp/cfgdir"
expect_fail "directory as the config" "cfgdir: is a directory" "$gcache" train "$tmp/cfgdir"

# good runs
if ! "$gcache" grad --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/g.safetensors" --chunk 4 >"$tmp/out" 2>"$tmp/err"; then
  echo "FAIL: grad: $(cat "$tmp/err")"; fail=1
else echo "ok: grad: $(cat "$tmp/out")"; fi
if ! "$gcache" embed --model "$m" --inputs "$m/inputs.safetensors" --out "$tmp/e.safetensors" >"$tmp/out" 2>"$tmp/err"; then
  echo "FAIL: embed: $(cat "$tmp/err")"; fail=1
else echo "ok: embed"; fi
d=$fx/dinov3_reg4
if ! "$gcache" grad --model "$d" --inputs "$d/inputs.safetensors" --out "$tmp/dg.safetensors" --chunk 3 >"$tmp/out" 2>"$tmp/err"; then
  echo "FAIL: dinov3 grad: $(cat "$tmp/err")"; fail=1
else echo "ok: dinov3 grad: $(cat "$tmp/out")"; fi
if ! "$gcache" embed --model "$d" --inputs "$d/inputs.safetensors" --out "$tmp/de.safetensors" >"$tmp/out" 2>"$tmp/err"; then
  echo "FAIL: dinov3 embed: $(cat "$tmp/err")"; fail=1
else echo "ok: dinov3 embed"; fi
expect_fail "dinov3 without its second view" "pixel_values_b" "$gcache" grad --model "$d" --inputs "$m/inputs.safetensors" --out "$tmp/o"
expect_fail "dinov3 temperature too small" "--temperature 1e-300: outside" "$gcache" grad --model "$d" --inputs "$d/inputs.safetensors" --out "$tmp/o" --temperature 1e-300
expect_fail "dinov3 temperature inf" "--temperature 'inf'" "$gcache" grad --model "$d" --inputs "$d/inputs.safetensors" --out "$tmp/o" --temperature inf
exit $fail
