#!/bin/bash
# fault_test.sh - OpenCL failing at every point of a short run: the N-th
# allocation, kernel launch or program build fails (tests/fault/cl_fault.c,
# loaded in front of the real OpenCL library), for every N the run reaches.
# Each run must end cleanly: exit 0 (the failure was absorbed, e.g. a pinned
# buffer falling back to plain memory) or exit 1 with "strata: error:" and a
# message; never a signal, a hang or exit 2 (the input was fine); and the
# checkpoint it resumed from and saves to must stay complete: step 2 or 3.
#
# The N tried are the first call of each distinct call path (the shim hashes
# the stack of every call of the counting run: STRATA_CL_FAULT_SITES): a launch
# failing in the third step takes the path it takes in the first, and walking
# every call (205 runs, 10 minutes of a cold CI machine) tried the same paths
# again and again. STRATA_FAULT_EVERY=1 walks every call instead.
#
# In the sanitizer build (tools/sanitize.sh) the runs also check for leaks and
# memory errors on every failure path; STRATA_FAULT_STRIDE=K there tries every
# K-th of those calls of each kind (default 1: all) to bound the time.
#
# usage: fault_test.sh path/to/strata path/to/libstrata_cl_fault.so
set -u
strata=$1
shim=$2
stride=${STRATA_FAULT_STRIDE:-1}
# AddressSanitizer's runtime must come first among preloaded libraries.
asan=$(ldd "$strata" | awk '/libasan/ {print $3}')
[ -n "$asan" ] && shim="$asan $shim"
work=$(mktemp -d /tmp/strata-fault-XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
tiny=(--layers 1 --embd 16 --heads 2 --batch 4 --eval-batches 1 --steps 3)
"$strata" train "${tiny[@]}" --stop-at 2 --out "$work/start" >"$work/start.log" 2>&1 ||
    { echo "FAIL: the starting run failed: $(tail -3 "$work/start.log")"; exit 1; }
# Once more without the shim, so that the runs below make the same calls: on a
# busy machine the starting run's device profile may be unsteady, and such a
# profile is measured again by the next command (then kept).
cp -r "$work/start" "$work/warm"
"$strata" train --resume "$work/warm" --out "$work/warm" >"$work/warm.log" 2>&1 ||
    { echo "FAIL: the warm-up run failed: $(tail -3 "$work/warm.log")"; exit 1; }
cp -r "$work/start" "$work/ck"
STRATA_CL_FAULT_COUNT="$work/count" STRATA_CL_FAULT_SITES="$work/sites" LD_PRELOAD=$shim \
    "$strata" train --resume "$work/ck" --out "$work/ck" >"$work/count.log" 2>&1 ||
    { echo "FAIL: the counting run failed: $(tail -3 "$work/count.log")"; exit 1; }
read -r _ allocs _ enqueues _ builds <"$work/count"
[ "$allocs" -gt 10 ] && [ "$enqueues" -gt 10 ] && [ "$builds" -gt 0 ] ||
    { echo "FAIL: the shim counted nothing: $(cat "$work/count")"; exit 1; }

# The calls to fail, per kind: the first of each call path, or all of them.
calls() { # kind
    if [ "${STRATA_FAULT_EVERY:-0}" = 1 ]; then
        seq 1 "$(grep -c "^$1 " "$work/sites")"
    else
        awk -v k="$1" '$1 == k && !seen[$3]++ { print $2 }' "$work/sites"
    fi | awk -v s="$stride" '(NR - 1) % s == 0'
}
runs=0 absorbed=0
for kind in alloc build enqueue; do
    case $kind in alloc) total=$allocs ;; build) total=$builds ;; enqueue) total=$enqueues ;; esac
    [ "$(grep -c "^$kind " "$work/sites")" = "$total" ] ||
        { echo "FAIL: the shim listed $(grep -c "^$kind " "$work/sites") $kind calls of $total"; exit 1; }
    for n in $(calls "$kind"); do
        rm -rf "$work/ck"
        cp -r "$work/start" "$work/ck"
        (STRATA_CL_FAULT=$kind:$n LD_PRELOAD=$shim timeout 120 "$strata" train --resume "$work/ck" \
            --out "$work/ck") >"$work/run.log" 2>&1
        rc=$?
        runs=$((runs + 1))
        what="$kind call $n of $total"
        grep -q "cl_fault: failing $kind call $n" "$work/run.log" || { fail "$what: not reached"; continue; }
        case $rc in
        0) absorbed=$((absorbed + 1)) ;;
        1) grep -q "^strata: error: ." "$work/run.log" || fail "$what: exit 1 without a message: $(tail -2 "$work/run.log")" ;;
        *) fail "$what: exit $rc: $(tail -3 "$work/run.log")" ;;
        esac
        step=$("$strata" eval --model "$work/ck" 2>&1 >/dev/null | sed -n 's/^model: .*, step \([0-9]*\) .*/\1/p')
        case "$rc:$step" in
        0:3 | 1:2 | 1:3) ;;
        *) fail "$what: exit $rc, then the checkpoint loads as step '$step'" ;;
        esac
    done
done
if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
how="each call path once"
[ "${STRATA_FAULT_EVERY:-0}" = 1 ] && how="every call"
[ "$stride" != 1 ] && how="$how, every ${stride}th"
echo "$runs runs with a failing OpenCL call (of $allocs allocations, $builds builds, $enqueues launches: $how): all clean, $absorbed absorbed"
