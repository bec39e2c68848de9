#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs it.
set -eu
cd "$(dirname "$0")/.."
. tools/deps.sh
[ -f build/build.ninja ] || meson setup build -Dcuda=auto >/dev/null
ninja -C build
./build/tools/gc_demo
