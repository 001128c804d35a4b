#!/bin/bash
# bad_input_test.sh - a table of bad command lines and files: each must exit 2
# with a message that names the value and says what would be accepted, and
# leave nothing behind. Each row: the text the message must hold, then the
# command's arguments (after "strata").
#
# usage: bad_input_test.sh path/to/strata
set -u
strata=$1
work=$(mktemp -d /tmp/strata-bad-XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0 rows=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
# row TEXT ARGS...: exit 2, TEXT in the output, no crash.
row() {
    local text=$1
    shift
    rows=$((rows + 1))
    local out rc
    out=$(timeout 120 "$strata" "$@" 2>&1)
    rc=$?
    if [ "$rc" != 2 ]; then
        fail "strata $* -> exit $rc, expected 2: $out"
    elif ! grep -qF -- "$text" <<<"$out"; then
        fail "strata $* -> the message lacks '$text': $out"
    fi
}
tiny=(--layers 1 --embd 16 --heads 2 --batch 4 --eval-batches 1)

# A checkpoint to resume, and copies with damaged settings in the manifest.
"$strata" train "${tiny[@]}" --steps 4 --stop-at 2 --out "$work/ck" >/dev/null 2>&1 ||
    { echo "FAIL: could not make a checkpoint"; exit 1; }
damaged() { # damaged NAME SED-EXPRESSION: a copy of the checkpoint with its manifest edited
    cp -r "$work/ck" "$work/$1"
    sed -i "$2" "$work/$1"/checkpoint-step*.json
}
damaged mb0 's/"micro_batches": 1,/"micro_batches": 0,/'
damaged batch 's/"batch": 4,/"batch": 4294967360,/'
damaged lr 's/"lr": [0-9.e-]*,/"lr": -1,/'
damaged sched 's/"schedule": "1f1b",/"schedule": "zigzag",/'
damaged version 's/"version": 1,/"version": 99,/'
printf '{"vocab_size": 256, "n_positions": 12, "n_embd": 16, "n_layer": 3000000, "n_head": 2}' >"$work/deep.json"
printf '{"vocab_size": 256, "n_positions": 12, "n_embd": 1073741824, "n_layer": 1, "n_head": 2}' >"$work/wide.json"
printf '{"vocab_size": 256, "n_positions": 12, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_inner": 0}' >"$work/inner.json"

# Flags: the value and the accepted range.
row "--devices is empty: give all, gpu, cpu" train --devices "" --steps 1
row "bad --mem-limit '0:inf': use INDEX:SIZE pairs" train --mem-limit 0:inf --steps 1
row "sizes from 1K to 1E bytes" train --mem-limit 0:0.5 --steps 1
row "bad split 'layers:0-4294967296'" train --split layers:0-4294967296 --steps 1
row "at most 4096" train --split layers:0-2147483647,5-6 --steps 1
row "bad split 'ratio:inf,1': ratio:W1,W2,... takes weights from more than 0 to 1e6" train --split ratio:inf,1 --steps 1
row "bad split 'ratio:0,1'" plan --split ratio:0,1
row "--min-lr 1 is above --lr 0.1" train --min-lr 1 --lr 0.1 --steps 1
row "bad value 'x' for --steps: an integer from 1 to" train --steps x
row "bad value '0' for --batch: an integer from 1 to 1048576" train --batch 0
row "bad value '5000' for --layers: an integer from 1 to 1000" train --layers 5000
row "bad value 'nan' for --clip: a number from 0 to" train --clip nan
row "bad value '0' for --lr: a number from 1e-12 to 10" train --lr 0
row "bad value '0' for --keep: an integer from 1 to" train --keep 0
row "bad value 'maybe' for --on-nan: abort or skip" train --on-nan maybe
row "bad value '-1' for --eval-every" train --eval-every -1
row "does not split into 4 equal micro-batches" train "${tiny[@]}" --batch 6 --micro-batches 4 --steps 1
row "bad value '-1' for --temperature: a number from 0 to 100" generate --model "$work/ck" --temperature -1
row "bad value 'x' for -n: an integer from 0 to" generate --model "$work/ck" -n x
row "bad value '0' for --seq: an integer from 1 to" eval --model "$work/ck" --seq 0
row "unknown option --stpes (did you mean --steps?)" train --stpes 3
row "unknown option --tempreature (did you mean --temperature?)" generate -m "$work/ck" --tempreature 1
row "unknown command 'trian' (did you mean \`strata train\`?)" trian
# Files: the file, the field and what would be accepted.
row "\"n_layer\" must be an integer from 1 to 4096" train --config "$work/deep.json" --steps 1
row "\"n_embd\" must be an integer from 1 to 65536" train --config "$work/wide.json" --steps 1
row "\"n_inner\" must be an integer from 1 to" train --config "$work/inner.json" --steps 1
row "cannot open model config $work/none.json" train --config "$work/none.json" --steps 1
row "cannot open data file '$work/none.txt'" train --data "$work/none.txt" --steps 1
row "model folder '$work/none' does not exist" train --resume "$work/none"
row "cannot create folder '/proc/strata-x'" train --out /proc/strata-x/y --steps 1
row "\"micro_batches\" is 0, where --micro-batches takes 1 to 1048576" train --resume "$work/mb0"
row "\"batch\" is 4294967360, where --batch takes 1 to 1048576" train --resume "$work/batch"
row "\"lr\" is -1, where --lr takes 1e-12 to 10" train --resume "$work/lr"
row "schedule 'zigzag' is unknown" train --resume "$work/sched"
row "manifest version 99; this strata reads version 1" eval --model "$work/version"
# Nothing written by a refused command.
[ "$(ls "$work/ck" | grep -c '^checkpoint-step')" = 1 ] || fail "a refused command changed the checkpoint: $(ls "$work/ck")"

if [ "$failures" -gt 0 ]; then
    echo "$failures of $rows rows failed" >&2
    exit 1
fi
echo "all $rows bad inputs refused with exit 2 and a message"
