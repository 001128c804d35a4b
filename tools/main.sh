#!/usr/bin/env bash
# main.sh - the main job: set up and build, then list the OpenCL devices and
# check kernels and CLBlast GEMM on every one of them.
# Arguments are passed to `strata check` (e.g. --devices 0).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build=${BUILD_DIR:-build}
"$build/strata" devices
"$build/strata" check "$@"
