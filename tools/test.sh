#!/usr/bin/env bash
# test.sh - set up and build, then run the whole test suite (one PoCL device
# and again with two). Arguments are passed to `meson test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build=${BUILD_DIR:-build}
meson test -C "$build" --print-errorlogs "$@"
