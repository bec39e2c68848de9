# Sourced by the A/B scripts that run the whole GPU suite first (s14a.sh, s15a.sh, s15b.sh):
# build.sh, then the tree before (.head0/) built in the background while suite.sh runs,
# then ab.sh (which finds it built) and its `row`.
. tools/bench/build.sh
(cd .head0 && ln -sfn ../.device-debs .device-debs && meson setup build-gpu -Dcuda=enabled && ninja -C build-gpu tools/gcache) >/tmp/head0.log 2>&1 &
. tools/bench/suite.sh
wait
. tools/bench/ab.sh
