#!/bin/bash
# crash_test.sh - a save interrupted anywhere leaves a complete, consistent
# checkpoint: the previous one or the new one, never a mix.
#
# A tiny run saves at steps 2 and 4. The binary lists every crash point a
# save passes (each create, write, fsync, rename and folder sync of every
# file, each removal when cleaning: STRATA_TEST_CRASH_LIST); the test then
# kills the run with SIGKILL at each point in turn (STRATA_TEST_CRASH_AT=N)
# and checks that
#   - `strata eval` loads a save of step 2 or 4, with the loss the
#     uninterrupted run's save of that step gives (step 4 only once the
#     second save has begun; nothing only while the first is unfinished),
#   - `strata train --resume` from it continues with the losses of a resume
#     from the uninterrupted run's save, and its own save cleans what the crash
#     left (temporary files, unfinished shards, a second manifest).
# Then the same with a full disk at the N-th file write (STRATA_TEST_FULL_DISK_AT):
# exit 1 with the cause, the previous save intact, no temporary file left.
# With "mpi" as the second argument, the run is 2 MPI ranks, and each rank is
# killed at the boundaries of each of its files (before the temporary file is
# created, after it is renamed into place) and at every removal: where one
# rank's state can be out of step with the other's. The states inside one
# file's write (part written, before fsync, before rename) are the same code
# in one process and under MPI, and the single run covers every one of them;
# walking them under mpirun too took 9 of a cold CI machine's minutes.
#
# usage: crash_test.sh path/to/strata [mpi]
set -u
strata=$1
mode=${2:-single}
work=$(mktemp -d /tmp/strata-crash-XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

run=("$strata")
ranks=(0)
if [ "$mode" = mpi ]; then
    mpirun=$(command -v mpirun) || { echo "no mpirun: skipped"; exit 77; }
    "$strata" --version | grep -q "MPI support compiled in" || { echo "strata built without MPI: skipped"; exit 77; }
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    export POCL_DEVICES=pthread POCL_MAX_PTHREAD_COUNT=1
    # The surviving rank of a killed run gets SIGKILL at once rather than a
    # second after SIGTERM (Open MPI's default): 2 s less per crash point.
    export OMPI_MCA_odls_base_sigkill_timeout=0
    run=("$mpirun" -np 2 --oversubscribe "$strata")
    ranks=(0 1)
fi
tiny=(--layers 2 --embd 16 --heads 2 --batch 4 --eval-batches 1 --steps 4 --save-every 2 --warmup 1)
# Under MPI: one pipeline of 2 stages, each rank writing its shard.
[ "$mode" = mpi ] && tiny+=(--parallel pipeline)

steps_of() { grep '"event":"step"' "$1" | sed 's/"ms".*//'; }
# The eval line of a model folder (its timing cut off); eval's stderr and exit
# code go to eval.err.
eval_line() {
    "$strata" eval --model "$1" >"$work/eval.out" 2>"$work/eval.err"
    echo "(eval exit $?)" >>"$work/eval.err"
    sed 's/ | [0-9.]* s$//' "$work/eval.out"
}

# The uninterrupted run, and what its saves of step 2 and 4 evaluate to.
"${run[@]}" train "${tiny[@]}" --out "$work/ref" --log-json "$work/ref.json" >"$work/ref.log" 2>&1 ||
    { echo "FAIL: the reference run failed: $(tail -5 "$work/ref.log")"; exit 1; }
"${run[@]}" train "${tiny[@]}" --stop-at 2 --out "$work/ref2" >/dev/null 2>&1 ||
    { echo "FAIL: the reference run to step 2 failed"; exit 1; }
ref2=$(eval_line "$work/ref2")
# Resumes run in one process: from 2 ranks' save they continue like this one.
"$strata" train --resume "$work/ref2" --log-json "$work/ref2r.json" >/dev/null 2>&1 ||
    { echo "FAIL: resuming the reference save of step 2 failed"; exit 1; }
ref4=$(eval_line "$work/ref")
[ -n "$ref2" ] && [ "$ref2" != "$ref4" ] || { echo "FAIL: reference evals '$ref2' '$ref4'"; exit 1; }

# The crash points of each rank, and how many belong to the first save.
STRATA_TEST_CRASH_LIST="$work/points" "${run[@]}" train "${tiny[@]}" --out "$work/count" >/dev/null 2>&1
STRATA_TEST_CRASH_LIST="$work/points1" "${run[@]}" train "${tiny[@]}" --stop-at 2 --out "$work/count1" \
    >/dev/null 2>&1
covered=0 # crash points reached and checked
for r in "${ranks[@]}"; do
    total=$(grep -c "^r$r " "$work/points")
    first=$(grep -c "^r$r " "$work/points1")
    [ "$total" -gt "$first" ] && [ "$first" -gt 4 ] ||
        { echo "FAIL: rank $r: $total crash points, $first in the first save"; exit 1; }
    for n in $(seq 1 "$total"); do
        point=$(grep "^r$r $n " "$work/points" | cut -d' ' -f3-)
        [ "$mode" = mpi ] && ! grep -qE ': (create temporary file|renamed, before folder sync|remove .*)$' <<<"$point" &&
            continue
        d="$work/run"
        rm -rf "$d"
        at=$n
        [ "$mode" = mpi ] && at="$r:$n"
        (STRATA_TEST_CRASH_AT=$at timeout 120 "${run[@]}" train "${tiny[@]}" --out "$d") >"$work/crash.log" 2>&1
        rc=$?
        covered=$((covered + 1))
        grep -q "crash point $n " "$work/crash.log" ||
            { fail "rank $r point $n ($point): not reached (exit $rc)"; continue; }
        [ "$rc" != 0 ] || fail "rank $r point $n ($point): the run went on after SIGKILL"
        got=$(eval_line "$d")
        if [ -z "$got" ]; then
            [ "$n" -le "$first" ] ||
                fail "rank $r point $n ($point): the step-2 save was lost: $(cat "$work/eval.err")"
            grep -q "no complete checkpoint\|holds no checkpoint" "$work/eval.err" ||
                fail "rank $r point $n ($point): no clear message: $(cat "$work/eval.err")"
            continue
        fi
        step=$(sed -n 's/^model: .*, step \([0-9]*\) .*/\1/p' "$work/eval.err")
        case "$step" in
        2) [ "$got" = "$ref2" ] || fail "rank $r point $n ($point): step 2 evaluates to '$got', not '$ref2'" ;;
        4) [ "$n" -gt "$first" ] && [ "$got" = "$ref4" ] ||
            fail "rank $r point $n ($point): step 4 '$got' (reference '$ref4')" ;;
        *) fail "rank $r point $n ($point): loaded step '$step': $(cat "$work/eval.err")" ;;
        esac
        if [ "$step" = 2 ]; then
            "$strata" train --resume "$d" --out "$d" --log-json "$work/res.json" >"$work/res.log" 2>&1 ||
                { fail "rank $r point $n ($point): resume failed: $(tail -3 "$work/res.log")"; continue; }
            cmp -s <(steps_of "$work/ref2r.json") <(steps_of "$work/res.json") ||
                fail "rank $r point $n ($point): resumed losses differ from the uninterrupted run's"
            left=$(ls "$d" | grep -E '\.tmp\.|^checkpoint-step00000002|-step00000002-|^model\.safetensors$')
            [ -z "$left" ] || fail "rank $r point $n ($point): the next save left: $left"
        fi
    done
done

# A full disk at the n-th file write, from the first write until a run gets through.
full=0
for n in 1 2 3 5 8 13 21 34 55 89 144 233 377 610 987 1597 2584; do
    d="$work/full"
    rm -rf "$d"
    STRATA_TEST_FULL_DISK_AT=0:$n timeout 120 "${run[@]}" train "${tiny[@]}" --out "$d" >"$work/full.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] && break
    full=$((full + 1))
    [ "$rc" = 1 ] || fail "full disk at write $n: exit $rc, expected 1: $(tail -8 "$work/full.log")"
    grep -q "No space left on device" "$work/full.log" || fail "full disk at write $n: no cause: $(tail -2 "$work/full.log")"
    ls "$d" | grep -q '\.tmp\.' && fail "full disk at write $n: temporary files left: $(ls "$d")"
    if grep -q "saved step 2" "$work/full.log"; then
        [ "$(eval_line "$d")" = "$ref2" ] || fail "full disk at write $n: the step-2 save was lost"
    fi
done
[ "$full" -ge 5 ] || fail "the full-disk walk failed only $full runs"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all $covered crash points ($mode) and $full full-disk points left a complete checkpoint"
