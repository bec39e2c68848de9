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
expect_fail "unknown command" "unknown command" "$gcache" frobnicate
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
exit $fail
