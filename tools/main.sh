#!/usr/bin/env bash
# main.sh - the main job: set up and build, list the OpenCL devices, train the
# built-in default model (the addition task) on the OpenCL devices found
# (every one is offered; the planner uses those that make a step faster, and
# chooses the micro-batches), and generate from it.
# Arguments are passed to `strata train` (e.g. --devices 0 or --steps 500).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
build=${BUILD_DIR:-build}
out=${STRATA_OUT:-runs/default}
"$build/strata" devices
# --force: each run of this script replaces the last one's model in $out.
"$build/strata" train --out "$out" --force --log-every 50 "$@"
echo
echo "generating from $out (answers are written least significant digit first):"
"$build/strata" generate --model "$out" --prompt "123+456=" --prompt "905+187=" \
    --prompt "999+999=" -n 5 --temperature 0
