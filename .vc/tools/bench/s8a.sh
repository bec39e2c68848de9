#!/usr/bin/env bash
# session 8, first device call: the build and the whole GPU suite at the last landed commit
# (stop 14's host-only changes had not run under the CUDA suite)
. tools/bench/build.sh
. tools/bench/suite.sh
