#!/usr/bin/env bash
# session 14, third call (right after s14b, on the same machine): the table of
# docs/BENCHMARKS.md side by side, as session 12's s12c.sh ran it (the same commands).
exec bash "$(dirname "$0")/s12c.sh"
