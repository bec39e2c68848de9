#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds (with CUDA when nvcc is
# there), runs every test. The gpu suite runs where a GPU is present and is skipped
# (and says so) elsewhere. Usage: tools/test.sh [extra meson test args]
set -eu
cd "$(dirname "$0")/.."
. tools/deps.sh
[ -f build/build.ninja ] || meson setup build -Dcuda=auto >/dev/null
ninja -C build
meson test -C build --print-errorlogs --num-processes "$(nproc)" "$@"
