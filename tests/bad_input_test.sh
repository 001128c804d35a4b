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
    local rc
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
row "--min-lr 0.01 is above --lr 0.005" train --min-lr 0.01 --steps 1
row "bad --parallel 'dp:0': auto, pipeline, data, dp:D,pp:S" train --parallel dp:0 --steps 1
row "dp:D (S = 1) or pp:S (D = 1)" plan --parallel pp:2,dp:1
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
row "cannot open model config '$work/none.json'" train --config "$work/none.json" --steps 1
row "cannot open data file '$work/none.txt'" train --data "$work/none.txt" --steps 1
row "model folder '$work/none' does not exist" train --resume "$work/none"
row "cannot create folder '/proc/strata-x'" train --out /proc/strata-x/y --steps 1
row "\"micro_batches\" is 0, where --micro-batches takes 1 to 1048576" train --resume "$work/mb0"
row "\"batch\" is 4294967360, where --batch takes 1 to 1048576" train --resume "$work/batch"
row "\"lr\" is -1, where --lr takes 1e-12 to 10" train --resume "$work/lr"
row "schedule 'zigzag' is unknown" train --resume "$work/sched"
row "manifest version 99; this strata reads version 1" eval --model "$work/version"
# Not regular files: a FIFO (which blocked forever), a folder where a file goes.
mkfifo "$work/fifo"
row "it is not a regular file" train --config "$work/fifo" --steps 1
row "is not a file" train --data "$work/fifo" --steps 1
row "it is not a regular file" tokenize --tokenizer "$work/fifo" "$work/fifo"
row "it is not a regular file (a FIFO" train "${tiny[@]}" --steps 1 --log-json "$work/fifo" --out "$work/fl"
ln -s "$work/victim" "$work/link.json"
row "it is a symbolic link" train "${tiny[@]}" --steps 1 --log-json "$work/link.json" --out "$work/fl"
[ ! -e "$work/victim" ] && [ ! -e "$work/fl" ] || fail "a refused --log-json created files"
mkdir -p "$work/dirshard/model.safetensors"
cp "$work/ck/config.json" "$work/dirshard/"
row "it is a folder, not a file" eval --model "$work/dirshard"
# tokenize --decode: only ids of the vocabulary (4294967296 was read as 0, "abc" as nothing).
sp="$STRATA_SOURCE_ROOT/tests/data/tokenizers/sentencepiece.json"
printf '4294967296\n' >"$work/ids-big"
printf '5 abc 6\n' >"$work/ids-word"
printf '5 1400\n' >"$work/ids-range"
printf '7x\n' >"$work/ids-junk"
row "'4294967296' (item 1) is not a token id: give decimal ids from 0 to 1399" tokenize --tokenizer "$sp" --decode "$work/ids-big"
row "'abc' (item 2) is not a token id" tokenize --tokenizer "$sp" --decode "$work/ids-word"
row "'1400' (item 2) is not a token id" tokenize --tokenizer "$sp" --decode "$work/ids-range"
row "'7x' (item 1) is not a token id" tokenize --tokenizer "$sp" --decode "$work/ids-junk"
# A pre-tokenizer pattern that backtracks without end: an error (it was taken
# for "no more matches", wrong ids and exit 0), at once (it took 42 s).
python3 - "$sp" "$work/patho.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
t["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$|!"}, "behavior": "Removed",
                      "invert": False}
json.dump(t, open(sys.argv[2], "w"))
PY
for _ in $(seq 1 1000); do printf 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaab '; done >"$work/patho.txt"
row "regular expression failed at byte 0 of a text piece: match limit exceeded" tokenize --tokenizer "$work/patho.json" --count "$work/patho.txt"
# Messages that named the wrong thing.
printf '{"model_type": "llama", "vocab_size": 256, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 12, "rope_theta": 0}' >"$work/theta0.json"
row '"rope_theta" is 0; it must be above 1' train --config "$work/theta0.json" --steps 1
printf '{"vocab_size": 256, "n_positions": 12, "n_embd": 16, "n_layer": 1, "n_head": 2, "attention_bias": false}' >"$work/notype.json"
row 'the file has no "model_type", so it was read as a GPT-2 config' train --config "$work/notype.json" --steps 1
row "is a file: a model is a folder" eval --model "$work/ck/config.json"
python3 - "$sp" "$work/nounk.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
t["model"]["unk_token"] = "<not-there>"
t["model"]["byte_fallback"] = False
json.dump(t, open(sys.argv[2], "w"))
PY
printf 'a\xe2\x98\x83b' >"$work/snow.txt"
row "the unk_token that stands for such characters is not in the vocabulary" tokenize --tokenizer "$work/nounk.json" "$work/snow.txt"
# Every flag is checked before any work: a run refused for a flag made no
# --out folder, tokenized no text and measured no device (the order of the
# lines it would have printed first). --lr 1e-4 with a --min-lr above it was
# refused after both, leaving the tokenizer's files in --out.
tok="$STRATA_SOURCE_ROOT/tests/data/tokenizers/llama3.json" txt="$STRATA_SOURCE_ROOT/tests/data/tokenizers/test.txt"
early() { # TEXT FLAGS...
    local text=$1
    shift
    rm -rf "$work/early"
    row "$text" train "${tiny[@]}" --data "$txt" --tokenizer "$tok" --out "$work/early" --steps 1 "$@"
    [ ! -e "$work/early" ] || fail "train $* refused late: it made --out ($(ls "$work/early"))"
    grep -qE "^(tokenizer|data|profiled):" <<<"$out" && fail "train $* worked before refusing: $out"
}
early "--min-lr 0.001 is above --lr 0.0001" --lr 1e-4 --min-lr 1e-3
early "bad split 'ratio:0,1'" --split ratio:0,1
early "bad --parallel 'dp:0'" --parallel dp:0
early "bad --mem-limit '0:x'" --mem-limit 0:x
early "--mem-limit names device 7, which is not among the chosen devices" --mem-limit 7:1G
early "does not split into 3 equal micro-batches" --micro-batches 3
early "it is not a regular file (a FIFO" --log-json "$work/fifo"
early "choose with --devices" --devices 9
row "bad split 'ratio:0,1'" generate --model "$work/ck" --split ratio:0,1
row "bad --mem-limit '0:x'" eval --model "$work/ck" --mem-limit 0:x
row "bad --mem-limit '0:x'" bench --scaling --mem-limit 0:x
# Nothing written by a refused command.
[ "$(ls "$work/ck" | grep -c '^checkpoint-step')" = 1 ] || fail "a refused command changed the checkpoint: $(ls "$work/ck")"

if [ "$failures" -gt 0 ]; then
    echo "$failures of $rows rows failed" >&2
    exit 1
fi
echo "all $rows bad inputs refused with exit 2 and a message"
