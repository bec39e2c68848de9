#!/usr/bin/env bash
# session 15, first call: DINOv3's class-token embedding on the class row alone in the last
# layer, and q on the query rows alone in every rows block (CLIP's last blocks too): the
# whole GPU suite, then the rows against the session's start (.head0 = cfea896),
# alternating.
. tools/bench/suite_ab.sh
rows_ab
echo "all took $(( $(date +%s) - t0 )) s"
