# Sourced by the shell tests. expect_fail DESCRIPTION PATTERN CMD...: CMD must exit 1 with
# exactly one line on stderr, matching PATTERN (grep). Needs $tmp (a scratch dir); sets
# fail=1 on a mismatch.
expect_fail() {
  local what=$1 pat=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  local lines
  lines=$(wc -l <"$tmp/err")
  if [ $rc -ne 1 ] || [ "$lines" -ne 1 ] || ! grep -q -- "$pat" "$tmp/err"; then
    echo "FAIL: $what: exit $rc, $lines lines on stderr (wanted 1 matching '$pat'):"
    cat "$tmp/err"
    fail=1
  else
    echo "ok: $what: $(cat "$tmp/err")"
  fi
}
