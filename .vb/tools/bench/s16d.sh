#!/usr/bin/env bash
# session 16, fourth call: the table of docs/BENCHMARKS.md side by side at the session's last
# change (the whole GPU suite passed after its kernel change in s16c), with the two open
# rows also in their best configurations within memory (bench_compare.sh's last two rows).
. tools/bench/build.sh
TABLE_TIMEOUT=480 . tools/bench/table.sh
echo "all took $(( $(date +%s) - t0 )) s"
