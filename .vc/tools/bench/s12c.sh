#!/usr/bin/env bash
# session 12, third call (right after s12b, on the same machine): the table of
# docs/BENCHMARKS.md side by side, our rows then PyTorch's (tools/bench_compare.sh), with no
# limit of its own (session 11's 290 s cut PyTorch's half).
. tools/bench/build.sh
. tools/bench/table.sh
echo "all took $(( $(date +%s) - t0 )) s"
