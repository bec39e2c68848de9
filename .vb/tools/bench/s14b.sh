#!/usr/bin/env bash
# session 14, second call, at the session's last kernel change (rope's x and y without
# __restrict__, for the rotation in place): the whole GPU suite.
. tools/bench/build.sh
. tools/bench/suite.sh
echo "all took $(( $(date +%s) - t0 )) s"
