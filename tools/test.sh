#!/usr/bin/env bash
# test.sh - set up and build, then run the whole test suite: every test with
# one PoCL device and again with several (meson test), then fine-tuning
# against transformers and peft (tools/finetune_check.sh; skipped, saying so,
# when PyPI cannot be reached), then the sanitizer
# build (tools/sanitize.sh: AddressSanitizer + UndefinedBehaviorSanitizer on
# the unit and CLI suites and the four-device pipeline test), then each fuzz
# harness for FUZZ_SECONDS (tools/fuzz.sh, default 5: the kept corpus is
# replayed by the suite; longer fuzzing is `FUZZ_SECONDS=600 tools/fuzz.sh`).
# The whole of it stays under 25 minutes on a fresh 2-core machine. Arguments are passed
# to the first `meson test`; STRATA_QUICK=1 runs only that one.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --tests
build=${BUILD_DIR:-build}
status=0
meson test -C "$build" --print-errorlogs "$@" || status=1
if [ "${STRATA_QUICK:-0}" != 1 ]; then
    # fine-tuning against transformers and peft (PyPI): 77 when they cannot install
    rc=0
    tools/finetune_check.sh "$build/strata" || rc=$?
    [ $rc = 0 ] || [ $rc = 77 ] || status=1
    tools/sanitize.sh || status=1
    FUZZ_SECONDS=${FUZZ_SECONDS:-5} tools/fuzz.sh || status=1
fi
if [ "$status" != 0 ]; then
    echo "test.sh: some tests failed (see above)" >&2
fi
exit $status
