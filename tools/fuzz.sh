#!/usr/bin/env bash
# fuzz.sh - builds the libFuzzer harnesses (tests/fuzz) with clang and
# AddressSanitizer + UndefinedBehaviorSanitizer in build-fuzz, and runs each
# for FUZZ_SECONDS (default 60) starting from the kept corpus in
# tests/fuzz/corpus/<harness>/. An input that crashes a harness is copied into
# that folder, where the ordinary test suite replays it from then on
# (fuzz-corpus-* tests), and the run fails. Called by tools/test.sh.
#
# Environment: FUZZ_SECONDS, FUZZ_BUILD_DIR (default build-fuzz), FUZZ_ONLY
# (a harness name: run only that one).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${FUZZ_BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}
if ! command -v clang >/dev/null; then
    echo "fuzz: clang is missing (tools/setup.sh installs clang and libclang-rt-14-dev)" >&2
    exit 1
fi
if [ ! -f "$build/build.ninja" ]; then
    # Without MPI: no harness needs it. No -Werror: the main build enforces warnings.
    CC=clang CXX=clang++ meson setup "$build" -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false -Dbuildtype=debugoptimized -Dwerror=false -Dmpi=disabled
fi
meson compile -C "$build"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=0
for n in safetensors config manifest data split tokenizer serve; do
    [ -n "${FUZZ_ONLY:-}" ] && [ "$FUZZ_ONLY" != "$n" ] && continue
    work=$(mktemp -d /tmp/strata-fuzz-corpus-XXXXXX)
    cp tests/fuzz/corpus/"$n"/* "$work"/
    mkdir "$work/artifacts"
    log="$build/fuzz-$n.log"
    if TMPDIR=/tmp "$build/tests/fuzz/fuzz_$n" -max_total_time="$seconds" -timeout=10 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
        "$work" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "fuzz $n: ${runs:-?} inputs in ${seconds} s, no crash"
    else
        failed=1
        echo "fuzz $n: FAILED (log: $log)" >&2
        grep -E "ERROR|SUMMARY|#[0-9]+ " "$log" | head -20 >&2
        for a in "$work"/artifacts/*; do
            [ -f "$a" ] || continue
            keep="tests/fuzz/corpus/$n/$(basename "$a")"
            cp "$a" "$keep"
            echo "fuzz $n: kept the crash input as $keep (a regression test from now on)" >&2
        done
    fi
    rm -rf "$work"
done
exit $failed
