# Sourced by device-run scripts after build.sh: one `gcache bench` row under a GC_GEMM_SM90
# mode, its step, memory and pairs/s on the console, the whole output in $OUT/rows.txt, its
# JSON line (with the mode and label) in $OUT/rows.jsonl (s17c, dact_first.sh).
G=${G:-./build-gpu/tools/gcache}
one() { # MODE LABEL BENCH-ARGS...
  local sm=$1 label=$2; shift 2
  GC_GEMM_SM90=$sm $G bench "$@" >/tmp/one.txt 2>&1
  grep -v '^{' /tmp/one.txt | sed "s|^|[$sm $label] |" >>"$OUT/rows.txt"
  echo "[$sm $label] $(grep -E '^ *step ' /tmp/one.txt | head -1) | $(grep -E 'peak memory' /tmp/one.txt | head -1) | $(grep -E 'pairs/s' /tmp/one.txt | head -1)"
  grep '^{' /tmp/one.txt | sed "s|^{|{\"sm90\":\"$sm\",\"label\":\"$label\",|" >>"$OUT/rows.jsonl"
}
