#!/bin/bash
# mpi_test.sh - `strata train` and `generate` under mpirun: 2 and 4 ranks give the losses of
# one process with the same number of stages (and 3 ranks for a Llama-family
# model); replicas (dp:2,pp:2, dp:4, dp:2) give the one-device losses and
# hold the same weights; a checkpoint written by 4 ranks
# continues on 2 ranks and in one process; a killed rank ends the job with a
# clear error within the timeout; ranks started with different flags are
# refused; `bench --scaling` measures over 1, 2... ranks; generation over 2
# and 3 ranks gives the text of one process.
#
# usage: mpi_test.sh path/to/strata    (skips, exit 77, without mpirun or MPI support)
set -u
strata=$1
work=$(mktemp -d /tmp/strata-mpi-XXXXXX)
trap 'rm -rf "$work"' EXIT
if ! command -v mpirun >/dev/null || ! "$strata" --version | grep -q "MPI support compiled in"; then
    echo "skip: no mpirun or strata built without MPI" >&2
    exit 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# One PoCL device per rank, one thread each. PoCL's pthread devices, as the
# rest of the suite uses: its basic devices (which run concurrently in one
# process) compile every kernel again, and again for each program variant a
# process with several of them builds (2 to 3 CPU minutes each on a cold
# machine); ranks are processes, which run concurrently with either, and the
# one-process references give the same losses on either (bitwise).
export POCL_MAX_PTHREAD_COUNT=1
mpirun=(mpirun --oversubscribe)
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
losses() { grep '"event":"step"' "$1" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
same_losses() { # file-a file-b what
    awk 'NR == FNR { a[FNR] = $1; n = FNR; next }
         { d = a[FNR] - $1; if (d < 0) d = -d; if (d > 1e-5 * a[FNR]) { print "step " FNR ": " a[FNR] " vs " $1; bad = 1 } }
         END { if (FNR != n) bad = 1; exit bad }' <(losses "$1") <(losses "$2") || fail "$3: losses differ"
}
tiny=(--layers 4 --embd 32 --heads 2 --batch 8 --eval-batches 2 --warmup 5 --micro-batches 4
      --split uniform --steps 12)

# Two ranks against one process with two stages.
POCL_DEVICES="pthread pthread" "$strata" train "${tiny[@]}" --devices 0,1 --log-json "$work/p2.json" \
    >"$work/p2.log" 2>&1 || fail "one process, two stages: $(tail -3 "$work/p2.log")"
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 2 "$strata" train "${tiny[@]}" \
    --log-json "$work/r2.json" >"$work/r2.log" 2>&1 || fail "mpirun -np 2: $(tail -5 "$work/r2.log")"
grep -q "rank 1: 0 pthread" "$work/r2.log" || fail "the plan does not show rank 1's device: $(cat "$work/r2.log")"
grep -q "^rank 1: stage 1" "$work/r2.log" || fail "no per-rank memory line from rank 1"
[ "$(grep -c '^step 12/12' "$work/r2.log")" = 1 ] || fail "rank 0 alone should print the log"
same_losses "$work/p2.json" "$work/r2.json" "2 ranks vs one process"

# Two ranks driving two devices each (host links inside a rank, MPI between):
# the same four stages.
POCL_DEVICES="pthread pthread" timeout 300 "${mpirun[@]}" -np 2 "$strata" train "${tiny[@]}" \
    --devices 0,1 --log-json "$work/r2x2.json" >"$work/r2x2.log" 2>&1 ||
    fail "mpirun -np 2 with two devices per rank: $(tail -5 "$work/r2x2.log")"
grep -q "plan: 4 stages" "$work/r2x2.log" || fail "2 ranks x 2 devices did not make 4 stages"

# Four ranks against one process with four stages; the checkpoint at step 6
# continues on 2 ranks and in one process like the uninterrupted 4-rank run.
POCL_DEVICES="pthread pthread pthread pthread" "$strata" train "${tiny[@]}" --devices 0-3 \
    --log-json "$work/p4.json" >"$work/p4.log" 2>&1 || fail "one process, four stages: $(tail -3 "$work/p4.log")"
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 4 "$strata" train "${tiny[@]}" \
    --log-json "$work/r4.json" >"$work/r4.log" 2>&1 || fail "mpirun -np 4: $(tail -5 "$work/r4.log")"
same_losses "$work/p4.json" "$work/r4.json" "4 ranks vs one process"
same_losses "$work/p4.json" "$work/r2x2.json" "2 ranks x 2 devices vs one process"
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 4 "$strata" train "${tiny[@]}" --stop-at 6 \
    --out "$work/c4" >"$work/c4.log" 2>&1 || fail "mpirun -np 4 --stop-at 6: $(tail -5 "$work/c4.log")"
[ -s "$work/c4/model.safetensors.index.json" ] || fail "4 ranks wrote no index"
[ "$(ls "$work/c4" | grep -c '^model-step00000006-[0-9a-f]\{8\}-0000[1-4]-of-00004.safetensors$')" = 4 ] ||
    fail "expected 4 model shards: $(ls "$work/c4")"
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 2 "$strata" train --resume "$work/c4" --out "$work/c2out" \
    --log-json "$work/c2.json" >"$work/c2r.log" 2>&1 || fail "resume on 2 ranks: $(tail -5 "$work/c2r.log")"
POCL_DEVICES=pthread "$strata" train --resume "$work/c4" --log-json "$work/c1.json" \
    >"$work/c1r.log" 2>&1 || fail "resume in one process: $(tail -5 "$work/c1r.log")"
grep '"event":"step"' "$work/r4.json" | sed -n '7,12p' >"$work/r4tail.json"
same_losses "$work/r4tail.json" "$work/c2.json" "4-rank checkpoint continued on 2 ranks"
same_losses "$work/r4tail.json" "$work/c1.json" "4-rank checkpoint continued in one process"
POCL_DEVICES=pthread "$strata" generate --model "$work/c4" --prompt "1" -n 3 >/dev/null 2>&1 ||
    fail "generate from a sharded checkpoint failed"

# A Llama-family model (grouped-query attention, untied head) on 3 ranks: the
# losses of one process with three stages; its sharded checkpoint generates.
llama=(--arch llama --kv-heads 1 --layers 3 --embd 32 --heads 2 --batch 8 --eval-batches 2
       --warmup 5 --micro-batches 4 --split uniform --steps 8)
POCL_DEVICES="pthread pthread pthread" "$strata" train "${llama[@]}" --devices 0-2 \
    --log-json "$work/l3.json" >"$work/l3.log" 2>&1 || fail "llama, one process: $(tail -3 "$work/l3.log")"
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 3 "$strata" train "${llama[@]}" \
    --out "$work/lr3" --log-json "$work/lr3.json" >"$work/lr3.log" 2>&1 ||
    fail "llama, mpirun -np 3: $(tail -5 "$work/lr3.log")"
same_losses "$work/l3.json" "$work/lr3.json" "llama: 3 ranks vs one process"
grep -q '"model_type": "llama"' "$work/lr3/config.json" || fail "llama: config.json is not a Llama config"
POCL_DEVICES=pthread "$strata" generate --model "$work/lr3" --prompt "1" -n 3 >/dev/null 2>&1 ||
    fail "llama: generate from the 3-rank checkpoint failed"

# Generation over ranks (rank 0 leads, one stage per rank, the sequences'
# passes flowing through the ranks): the text of one process, greedy and
# sampled, for one prompt and for three (the context sliding past 12
# positions); only rank 0 prints.
for m in c4 lr3; do
    for np in 2 3; do
        args=(generate --model "$work/$m" --prompt "1" --prompt "23" --prompt "4+5=" -n 20
              --temperature 0.8 --seed 3)
        want=$(POCL_DEVICES=pthread "$strata" "${args[@]}" 2>/dev/null)
        got=$(POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np $np "$strata" "${args[@]}" \
            2>"$work/gen.err") || fail "$m: generate on $np ranks: $(tail -3 "$work/gen.err")"
        [ "$got" = "$want" ] || fail "$m: generate on $np ranks differs: '$got' vs '$want'"
        [ "$(grep -c '^prompt: ' "$work/gen.err")" = 1 ] ||
            fail "$m: generate on $np ranks: not one statistics line: $(cat "$work/gen.err")"
        grep -q "| $np stages" "$work/gen.err" || fail "$m: not $np stages: $(cat "$work/gen.err")"
    done
done

# Replicas: dp:2,pp:2 and dp:4 on 4 ranks and dp:2 on 2 give the one-device
# losses (1e-5 relative per step over 20 steps, clipping on); every save
# checks that the replicas hold the same weights bit for bit (and a replica
# made to drift is caught); the first replica's checkpoint continues in one
# process.
rep=(--layers 4 --embd 32 --heads 2 --batch 8 --eval-batches 2 --warmup 5 --micro-batches 1
     --steps 20 --clip 0.5 --save-every 5)
POCL_DEVICES=pthread "$strata" train "${rep[@]}" --out "$work/d1" --log-json "$work/d1.json" \
    >"$work/d1.log" 2>&1 || fail "replicas' reference, one device: $(tail -3 "$work/d1.log")"
for layout in "4 dp:2,pp:2" "4 dp:4,pp:1" "2 dp:2,pp:1"; do
    set -- $layout
    name=${2//[:,]/_}
    POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np "$1" "$strata" train "${rep[@]}" --parallel "$2" \
        --out "$work/$name" --log-json "$work/$name.json" >"$work/$name.log" 2>&1 ||
        fail "mpirun -np $1 --parallel $2: $(tail -5 "$work/$name.log")"
    d=${2#dp:}
    grep -q "plan: ${d%%,*} replicas" "$work/$name.log" || fail "--parallel $2 made no replicas: $(head -8 "$work/$name.log")"
    same_losses "$work/d1.json" "$work/$name.json" "mpirun -np $1 --parallel $2 vs one device"
done
[ "$(ls "$work/dp_2_pp_2" | grep -c '^model-step00000020-[0-9a-f]\{8\}-0000[12]-of-00002.safetensors$')" = 2 ] ||
    fail "dp:2,pp:2 should write the first replica's 2 shards: $(ls "$work/dp_2_pp_2")"
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 4 "$strata" train "${rep[@]}" --parallel dp:2,pp:2 \
    --stop-at 10 --out "$work/dpc" >"$work/dpc.log" 2>&1 || fail "dp:2,pp:2 --stop-at 10: $(tail -5 "$work/dpc.log")"
POCL_DEVICES=pthread "$strata" train --resume "$work/dpc" --log-json "$work/dpc1.json" >"$work/dpc1.log" 2>&1 ||
    fail "dp:2,pp:2's checkpoint in one process: $(tail -3 "$work/dpc1.log")"
grep '"event":"step"' "$work/dp_2_pp_2.json" | sed -n '11,20p' >"$work/dptail.json"
same_losses "$work/dptail.json" "$work/dpc1.json" "dp:2,pp:2's checkpoint continued in one process"
# The moments split over the replicas' ranks (--shard-optimizer): bitwise the
# losses and the saved weights and moments of the unsplit run, and a run
# stopped at 10 resumes (the moments saved whole, split again) bitwise.
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 2 "$strata" train "${rep[@]}" --parallel dp:2,pp:1 \
    --shard-optimizer --out "$work/zs" --log-json "$work/zs.json" >"$work/zs.log" 2>&1 ||
    fail "mpirun -np 2 --shard-optimizer: $(tail -5 "$work/zs.log")"
grep -q "AdamW moments split over the replicas" "$work/zs.log" || fail "--shard-optimizer: $(head -8 "$work/zs.log")"
cmp -s <(grep '"event":"step"' "$work/dp_2_pp_1.json" | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/zs.json" | sed 's/"ms".*//') ||
    fail "mpirun --shard-optimizer changed the losses"
for k in model optimizer; do
    cmp -s "$(ls "$work/dp_2_pp_1"/$k-step00000020-* | tail -1)" "$(ls "$work/zs"/$k-step00000020-* | tail -1)" ||
        fail "mpirun --shard-optimizer saved other $k bytes"
done
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 2 "$strata" train "${rep[@]}" --parallel dp:2,pp:1 \
    --shard-optimizer --stop-at 10 --out "$work/zsc" >"$work/zsc.log" 2>&1 ||
    fail "mpirun --shard-optimizer --stop-at 10: $(tail -5 "$work/zsc.log")"
POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 2 "$strata" train --resume "$work/zsc" --parallel dp:2,pp:1 \
    --shard-optimizer --log-json "$work/zsc2.json" >"$work/zsc2.log" 2>&1 ||
    fail "mpirun --shard-optimizer resumed: $(tail -5 "$work/zsc2.log")"
cmp -s <(grep '"event":"step"' "$work/zs.json" | sed -n '11,20p' | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/zsc2.json" | sed 's/"ms".*//') ||
    fail "mpirun --shard-optimizer: resumed steps 11..20 differ"
out=$(POCL_DEVICES=pthread STRATA_TEST_DRIFT_AT=3:1 timeout 300 "${mpirun[@]}" -np 2 "$strata" train \
    "${rep[@]}" --parallel dp:2,pp:1 --out "$work/drift" 2>&1)
[ $? != 0 ] && grep -q "the replicas' weights differ" <<<"$out" ||
    fail "a replica that drifted was not caught at the save: $(tail -5 <<<"$out")"

# A rank killed mid-run ends the job, with the rank named, well within the timeout.
POCL_DEVICES=pthread timeout 120 "${mpirun[@]}" -np 2 "$strata" train "${tiny[@]}" --steps 100000 \
    --log-every 1 >"$work/kill.log" 2>&1 &
job=$!
for _ in $(seq 1 100); do
    grep -q "^step 3/" "$work/kill.log" 2>/dev/null && break
    sleep 0.2
done
victim=$(pgrep -f "strata train --layers 4 .*--steps 100000" | tail -1)
[ -n "$victim" ] && kill -9 "$victim"
start=$SECONDS
wait "$job"
rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "a killed rank: job exit $rc (124: it hung until the timeout)"
[ $((SECONDS - start)) -lt 30 ] || fail "the job took $((SECONDS - start)) s to end after the kill"
grep -qiE "rank [0-9].*(signal|killed|exited)" "$work/kill.log" || fail "no message naming the rank: $(tail -5 "$work/kill.log")"

# A signal to one rank: every rank stops after the same step and saves (exit 130),
# and the checkpoint resumes.
POCL_DEVICES=pthread timeout 120 "${mpirun[@]}" -np 2 "$strata" train "${tiny[@]}" --steps 100000 \
    --log-every 1 --out "$work/sig" >"$work/sig.log" 2>&1 &
job=$!
for _ in $(seq 1 100); do
    grep -q "^step 3/" "$work/sig.log" 2>/dev/null && break
    sleep 0.2
done
victim=$(pgrep -f "strata train --layers 4 .*--out $work/sig" | tail -1)
[ -n "$victim" ] && kill -TERM "$victim"
wait "$job"
rc=$?
[ "$rc" = 130 ] || fail "a signalled rank: job exit $rc, expected 130: $(tail -5 "$work/sig.log")"
saved=$(ls "$work/sig" | sed -n 's/^checkpoint-step0*\([0-9][0-9]*\)-.*/\1/p')
[ -n "$saved" ] || fail "a signalled rank: nothing saved: $(ls "$work/sig")"
out=$(POCL_DEVICES=pthread "$strata" train --resume "$work/sig" --stop-at $((saved + 1)) 2>&1)
grep -q "resuming at step $saved of 100000" <<<"$out" || fail "the signalled run's checkpoint does not resume: $out"

# A rank whose stage fails mid-step (injected) ends the job with its message.
start=$SECONDS
out=$(POCL_DEVICES=pthread STRATA_TEST_FAIL_STAGE=1:30 timeout 120 "${mpirun[@]}" -np 2 "$strata" train \
    "${tiny[@]}" --steps 1000 2>&1)
rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "a failing rank: job exit $rc (124: it hung)"
grep -q "rank 1: error: stage 1 .*injected failure" <<<"$out" || fail "no message from the failing rank: $out"
[ $((SECONDS - start)) -lt 60 ] || fail "the failing job took $((SECONDS - start)) s"

# bench --scaling over ranks: rows for 1, 2 (and the 3rd rank waits), the
# splitting workload refused on one rank and split on two; files from rank 0.
mkdir -p "$work/scal"
out=$(POCL_DEVICES=pthread timeout 300 "${mpirun[@]}" -np 3 "$strata" bench --scaling --layers 2 \
    --embd 32 --heads 2 --batch 8 --seq 32 --steps 2 --out "$work/scal" 2>"$work/scal.log") ||
    fail "bench --scaling on 3 ranks: $(tail -5 "$work/scal.log")"
grep -q "3 MPI ranks" <<<"$out" && grep -q "^| fits one device | 1 | dp:1,pp:1" <<<"$out" &&
    grep -q "^| fits one device | 2 | dp:" <<<"$out" && ! grep -q "| 4 |" <<<"$out" &&
    grep -q "^| needs splitting | 1 | does not fit" <<<"$out" &&
    grep -q "^| needs splitting | 2 | dp:1,pp:2" <<<"$out" ||
    fail "bench --scaling over ranks: unexpected table: $out"
[ "$(grep -c "^== fits one device" "$work/scal.log")" = 1 ] ||
    fail "bench --scaling: progress from more than rank 0: $(head -5 "$work/scal.log")"
grep -q '"workload": "needs splitting"' "$work/scal/scaling.json" 2>/dev/null ||
    fail "bench --scaling over ranks wrote no JSON"
out=$(POCL_DEVICES=pthread timeout 120 "${mpirun[@]}" -np 2 "$strata" bench --pipeline 2>&1)
[ $? != 0 ] && grep -q "under mpirun only --scaling" <<<"$out" ||
    fail "bench --pipeline under mpirun was not refused: $out"

# Ranks started with different flags.
out=$(POCL_DEVICES=pthread timeout 120 "${mpirun[@]}" -np 1 "$strata" train "${tiny[@]}" : \
    -np 1 "$strata" train "${tiny[@]}" --seed 2 2>&1)
rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "mismatched flags: exit $rc"
grep -q "rank 1 was started with other flags" <<<"$out" || fail "no mismatch message: $out"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all MPI checks passed"
