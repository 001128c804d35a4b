#!/bin/bash
# isolated.sh CMD [ARGS...] - runs one test with a Strata cache folder of its
# own, empty at the start and removed at the end (STRATA_CACHE_DIR: built
# kernels, device profiles, block timings, tuning). The test suite runs every
# test through it (tests/meson.build, the default test setup), so a test sees
# the same thing on a developer's machine that has run the suite before as on
# a fresh CI machine, whatever the tests before it measured: on a cold
# machine the planner's measurement under --mem-limit had failed while a warm
# cache hid it.
#
# PoCL's own compile cache (POCL_CACHE_DIR) is left shared: it holds compiled
# kernels keyed by their source and options, so it changes how long a build
# takes, not what Strata does.
set -u
root=${TMPDIR:-/tmp}
dir=$(mktemp -d "$root/strata-test-cache-XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
STRATA_CACHE_DIR=$dir "$@"
