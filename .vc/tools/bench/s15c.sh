#!/usr/bin/env bash
# session 15, third and last call: the table of docs/BENCHMARKS.md side by side
# (tools/bench_compare.sh, our rows and then PyTorch's, as s12c.sh runs it), then the whole
# GPU suite at the session's last change.
. tools/bench/build.sh
TABLE_TIMEOUT=280 . tools/bench/table.sh
echo "table done $(( $(date +%s) - t0 )) s"
. tools/bench/suite.sh
echo "all took $(( $(date +%s) - t0 )) s"
