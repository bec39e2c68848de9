#!/usr/bin/env bash
# The main job: installs what is missing, builds, and trains the quickstart CLIP on a
# synthetic image-caption set it renders itself (a few minutes on 2 CPU cores).
# Extra arguments are key=value overrides, e.g. tools/quickstart.sh device=cuda mixed_precision=bf16
set -eu
cd "$(dirname "$0")/.."
. tools/deps.sh
[ -f build/build.ninja ] || meson setup build -Dcuda=auto >/dev/null
ninja -C build
./build/tools/gcache train configs/quickstart.yaml "$@"
