#!/usr/bin/env bash
# Programmatic dependent launch (runtime/gc_launch.cuh): a kernel that gc_launch starts may
# be dispatched before the kernel before it has finished, so its first statement must be
# GC_PDL_WAIT(). This checks, in every .cu file under the given source root, that each
# __global__ function's body begins with it, and that no kernel is launched with <<<>>>
# (which would not need it, but mixes two launch rules in one file). Exit 1 naming each
# offence.
root=${1:-$(dirname "$0")/..}
fail=0
for f in $(find "$root/runtime" "$root/kernels" "$root/autograd" "$root/gradcache" "$root/models" -name '*.cu' 2>/dev/null); do
  # the first non-blank line after the '{' that opens each __global__ function
  awk -v F="$f" '
    /__global__/ && !/^[ \t]*\/\// { want = 1; name = $0 }
    want && /\{/ { want = 0; check = 1; sub(/.*\{/, ""); if ($0 ~ /[^ \t]/) { line = $0; check = 0; if (line !~ /^[ \t]*GC_PDL_WAIT\(\);/) { print F ": a kernel does not begin with GC_PDL_WAIT(): " name; bad = 1 } } ; next }
    check && /[^ \t]/ { check = 0; if ($0 !~ /^[ \t]*GC_PDL_WAIT\(\);/) { print F ":" NR ": a kernel does not begin with GC_PDL_WAIT(): " name; bad = 1 } }
    END { exit bad }' "$f" || fail=1
  if grep -n '<<<' "$f" | grep -v '^[0-9]*:[ \t]*//' | grep -v '//.*<<<' >/dev/null; then
    grep -n '<<<' "$f" | grep -v '//.*<<<' | sed "s|^|$f:|; s|\$|: a <<<>>> launch (use gc_launch)|"
    fail=1
  fi
done
[ $fail = 0 ] && echo "ok: every kernel begins with GC_PDL_WAIT() and launches through gc_launch"
exit $fail
