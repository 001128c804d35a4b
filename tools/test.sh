#!/usr/bin/env bash
# test.sh - set up and build, then run the whole test suite: every test with
# one PoCL device and again with several (meson test), then the sanitizer
# build (tools/sanitize.sh: AddressSanitizer + UndefinedBehaviorSanitizer on
# the unit and CLI suites and the four-device pipeline test), then each fuzz
# harness for FUZZ_SECONDS (tools/fuzz.sh, default 50). Arguments are passed
# to the first `meson test`; STRATA_QUICK=1 runs only that one.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build=${BUILD_DIR:-build}
status=0
meson test -C "$build" --print-errorlogs "$@" || status=1
if [ "${STRATA_QUICK:-0}" != 1 ]; then
    tools/sanitize.sh || status=1
    FUZZ_SECONDS=${FUZZ_SECONDS:-50} tools/fuzz.sh || status=1
fi
if [ "$status" != 0 ]; then
    echo "test.sh: some tests failed (see above)" >&2
fi
exit $status
