# Sourced by the device-run scripts here: OUT, the carried Debian packages, t0, and a CUDA
# build in build-gpu/ (leaves the script on failure, with the compiler's errors).
set -u
OUT=${OUT:-$PWD/out}
echo "at $(cat .commit 2>/dev/null)"
. tools/gpu_env.sh
t0=$(date +%s)
meson setup build-gpu -Dcuda=enabled >/dev/null 2>&1 || { echo setup failed; exit 1; }
ninja -C build-gpu >"$OUT/build.log" 2>&1 && rm "$OUT/build.log" || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
echo "build ok $(( $(date +%s) - t0 )) s"
