#!/bin/bash
# train_test.sh - `strata train`, `generate` and `eval` end to end on a tiny
# model: log format, JSON log, bitwise repeatable runs, a resumed run equal to
# an uninterrupted one, a run started from a folder's weights (--init), checkpoint files, generation with a seed, evaluation,
# and clear errors with exit code 2 for bad input.
#
# usage: train_test.sh path/to/strata
set -u
strata=$(realpath "$1")
work=$(mktemp -d /tmp/strata-train-XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# expect CODE TEXT -- command...: the exit code and a piece of stdout+stderr.
expect() {
    local code=$1 text=$2
    shift 3
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" != "$code" ]; then
        fail "$* -> exit $rc, expected $code: $out"
    elif ! grep -qF -- "$text" <<<"$out"; then
        fail "$* -> output lacks '$text': $out"
    fi
}

tiny=(--layers 1 --embd 32 --heads 2 --batch 8 --eval-batches 2 --warmup 5)

# A first run: log lines, JSON lines, a checkpoint.
out=$("$strata" train "${tiny[@]}" --steps 20 --eval-every 10 --out "$work/a" \
    --log-json "$work/a.json" 2>&1) || fail "train: $out"
grep -qE '^step 20/20 \| loss [0-9]+\.[0-9]{4} \| norm [0-9]+\.[0-9]{3} \| lr [0-9.]+e[-+][0-9]+ \| [0-9.]+ ms \| [0-9,]+ tok/s$' \
    <<<"$out" || fail "no step line in the expected format: $out"
grep -qE '^step 10/20 \| loss [0-9.]+ \| norm [0-9.]+ \| lr [0-9.e+-]+ \| [0-9.]+ ms \| [0-9,]+ tok/s \| eta [0-9]+s$' \
    <<<"$out" || fail "no step line in the expected format: $out"
grep -qE '^val  10/20 \| loss [0-9.]+ \| exact match [0-9.]+%$' <<<"$out" || fail "no val line: $out"
grep -q '^done: step 20 of 20' <<<"$out" || fail "no summary line: $out"
[ "$(grep -c '"event":"step"' "$work/a.json")" = 20 ] || fail "JSON log lacks 20 step lines"
grep -q '"event":"eval"' "$work/a.json" || fail "JSON log lacks eval lines"
# The newest save's file of a kind (model, optimizer, checkpoint) in a folder.
newest() {
    ls "$1"/"$2"-step*"${3:-}" 2>/dev/null | sort | tail -1
}
for f in config.json model.safetensors.index.json; do
    [ -s "$work/a/$f" ] || fail "checkpoint lacks $f"
done
for k in model optimizer checkpoint; do
    [ -s "$(newest "$work/a" $k)" ] || fail "checkpoint lacks its $k file: $(ls "$work/a")"
done
grep -q '"step": 20,' "$(newest "$work/a" checkpoint)" || fail "the manifest is not of step 20"
grep -q '"n_embd": 32' "$work/a/config.json" || fail "config.json lacks n_embd: $(cat "$work/a/config.json")"

# The same run again: bitwise the same losses (printed with 9 digits in JSON).
"$strata" train "${tiny[@]}" --steps 20 --eval-every 10 --log-json "$work/b.json" >/dev/null 2>&1 ||
    fail "second run failed"
cmp -s <(grep '"event":"step"' "$work/a.json" | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/b.json" | sed 's/"ms".*//') ||
    fail "two runs with one seed gave different losses"
# Activation recomputation: the same losses and weights, bitwise.
for rc in off on; do
    out=$("$strata" train "${tiny[@]}" --steps 6 --micro-batches 2 --recompute $rc --out "$work/rc$rc" \
        --log-json "$work/rc$rc.json" 2>&1) || fail "train --recompute $rc: $out"
done
grep -q "^plan: .*, activations recomputed$" <<<"$out" || fail "--recompute on is not in the plan line: $out"
cmp -s <(grep '"event":"step"' "$work/rcoff.json" | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/rcon.json" | sed 's/"ms".*//') ||
    fail "--recompute on gave other losses than off"
cmp -s "$(newest "$work/rcoff" model)" "$(newest "$work/rcon" model)" ||
    fail "--recompute on gave other weights than off"
expect 2 "bad value 'yes' for --recompute: auto, on or off" -- "$strata" train --recompute yes
# Another seed: different losses.
"$strata" train "${tiny[@]}" --steps 3 --seed 2 --log-json "$work/s2.json" >/dev/null 2>&1
cmp -s <(grep '"step":3,' "$work/a.json" | sed 's/"ms".*//') \
    <(grep '"step":3,' "$work/s2.json" | sed 's/"ms".*//') && fail "seed 2 gave seed 1's losses"

# Interrupted at step 10 and resumed: the same steps 11..20 and the same weights.
"$strata" train "${tiny[@]}" --steps 20 --eval-every 10 --stop-at 10 --out "$work/c" >/dev/null 2>&1 ||
    fail "run stopped at 10 failed"
out=$("$strata" train --resume "$work/c" --out "$work/d" --log-json "$work/d.json" 2>&1) ||
    fail "resume failed: $out"
grep -q 'resuming at step 10 of 20' <<<"$out" || fail "resume did not say where it starts: $out"
cmp -s <(grep '"event":"step"' "$work/a.json" | sed -n '11,20p' | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/d.json" | sed 's/"ms".*//') ||
    fail "resumed steps 11..20 differ from the uninterrupted run"
cmp -s "$(newest "$work/a" model)" "$(newest "$work/d" model)" ||
    fail "resumed weights differ from the uninterrupted run's"
cmp -s "$(newest "$work/a" optimizer)" "$(newest "$work/d" optimizer)" ||
    fail "resumed optimizer state differs from the uninterrupted run's"
expect 2 "differs from the checkpoint" -- "$strata" train --resume "$work/c" --batch 4
expect 2 "leave nothing" -- "$strata" train --resume "$work/a"

# The same for a Llama-family model (grouped-query attention, untied head):
# interrupted and resumed is bitwise the uninterrupted run, weights and
# optimizer too; its folder resumes as Llama without the flags.
llama=(--arch llama --kv-heads 1 --layers 2 --embd 32 --heads 2 --batch 8 --eval-batches 2 --warmup 5)
"$strata" train "${llama[@]}" --steps 12 --eval-every 6 --out "$work/la" --log-json "$work/la.json" \
    >/dev/null 2>&1 || fail "llama run failed"
"$strata" train "${llama[@]}" --steps 12 --eval-every 6 --stop-at 6 --out "$work/lc" >/dev/null 2>&1 ||
    fail "llama run stopped at 6 failed"
out=$("$strata" train --resume "$work/lc" --out "$work/ld" --log-json "$work/ld.json" 2>&1) ||
    fail "llama resume failed: $out"
grep -q 'Llama family' <<<"$out" || fail "the resumed run is not the Llama model: $out"
cmp -s <(grep '"event":"step"' "$work/la.json" | sed -n '7,12p' | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/ld.json" | sed 's/"ms".*//') ||
    fail "llama: resumed steps 7..12 differ from the uninterrupted run"
cmp -s "$(newest "$work/la" model)" "$(newest "$work/ld" model)" ||
    fail "llama: resumed weights differ from the uninterrupted run's"
cmp -s "$(newest "$work/la" optimizer)" "$(newest "$work/ld" optimizer)" ||
    fail "llama: resumed optimizer state differs from the uninterrupted run's"
expect 2 "cannot be used with --resume" -- "$strata" train --resume "$work/lc" --kv-heads 2

# --init: the weights of a model folder start a new run (step 0, a fresh
# optimizer, any data and learning rate); the model is the folder's. Step 1
# of the Llama run's weights is far below step 1 from random weights; a run
# from --init stopped and resumed is bitwise the uninterrupted one (micro-
# batches given: two fresh runs may plan differently); with
# --lr 1e-9 the weights come back as they went in (eval's loss the same).
first_loss() { grep '"event":"step"' "$1" | head -1 | sed 's/.*"loss":\([0-9.]*\).*/\1/'; }
out=$("$strata" train --init "$work/la" --steps 6 --lr 3e-4 --seed 5 --eval-batches 2 --batch 8 --micro-batches 2 \
    --out "$work/li" --log-json "$work/li.json" 2>&1) || fail "train --init failed: $out"
grep -q "starting from $work/la: step 12" <<<"$out" || fail "--init does not say what it starts from: $out"
grep -q 'Llama family' <<<"$out" || fail "--init did not take the folder's Llama model: $out"
awk -v a="$(first_loss "$work/li.json")" -v b="$(first_loss "$work/la.json")" \
    'BEGIN { exit !(a < 0.8 * b) }' ||
    fail "--init's step 1 loss $(first_loss "$work/li.json") is not below random weights' $(first_loss "$work/la.json")"
grep -q "\"init\": \"$work/la\"" "$(newest "$work/li" checkpoint)" ||
    fail "the manifest does not record where the weights came from"
"$strata" train --init "$work/la" --steps 6 --lr 3e-4 --seed 5 --eval-batches 2 --batch 8 --micro-batches 2 --stop-at 3 \
    --out "$work/lj" >/dev/null 2>&1 || fail "train --init --stop-at 3 failed"
"$strata" train --resume "$work/lj" --log-json "$work/lj.json" >/dev/null 2>&1 ||
    fail "resuming a run started with --init failed"
cmp -s <(grep '"event":"step"' "$work/li.json" | sed -n '4,6p' | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/lj.json" | sed 's/"ms".*//') ||
    fail "--init: resumed steps 4..6 differ from the uninterrupted run"
cmp -s "$(newest "$work/li" model)" "$(newest "$work/lj" model)" ||
    fail "--init: resumed weights differ from the uninterrupted run's"
"$strata" train --init "$work/la" --steps 1 --lr 1e-9 --warmup 0 --weight-decay 0 \
    --out "$work/lk" >/dev/null 2>&1 || fail "train --init --lr 1e-9 failed"
a=$("$strata" eval --model "$work/la" 2>/dev/null | grep -o 'loss [0-9.]*')
b=$("$strata" eval --model "$work/lk" 2>/dev/null | grep -o 'loss [0-9.]*')
[ -n "$a" ] && [ "$a" = "$b" ] || fail "--init then a step at lr 1e-9: eval '$b', the source's '$a'"
expect 2 "--init starts a new run" -- "$strata" train --init "$work/la" --resume "$work/lc"
expect 2 "--layers cannot be used with --init" -- "$strata" train --init "$work/la" --layers 3
expect 2 "--config cannot be used with --init" -- "$strata" train --init "$work/la" --config "$work/la/config.json"
expect 2 "$work/none" -- "$strata" train --init "$work/none"
# JSON Lines for fine-tuning: prompt and completion examples, the loss on
# the completions only; --init from the Llama run, then eval on the file;
# a malformed line is refused with its number, and examples longer than a
# row are said to be cut.
for i in $(seq 1 60); do
    printf '{"prompt": "%d+%d=", "completion": "%d"}\n' $((i % 10)) $((i % 7)) $((i % 10 + i % 7))
done >"$work/sums.jsonl"
out=$("$strata" train --init "$work/la" --data "$work/sums.jsonl" --seq 8 --steps 40 --lr 3e-3 \
    --warmup 5 --batch 8 --eval-batches 2 --out "$work/lsum" --log-json "$work/lsum.json" 2>&1) ||
    fail "train on JSON Lines failed: $out"
grep -q "60 examples (60 prompt and completion, 0 text)" <<<"$out" || fail "the JSON Lines data is not described: $out"
awk -v a="$(grep '"event":"step"' "$work/lsum.json" | tail -1 | sed 's/.*"loss":\([0-9.]*\).*/\1/')" \
    -v b="$(first_loss "$work/lsum.json")" 'BEGIN { exit !(a < 0.7 * b) }' ||
    fail "the completions' loss did not fall: $(grep '"event":"step"' "$work/lsum.json" | sed -n '1p;$p')"
expect 0 "eval: $work/sums.jsonl" -- "$strata" eval --model "$work/lsum" --data "$work/sums.jsonl" --seq 8
expect 0 "60 of the 60 examples have more than --seq + 1 = 4 tokens" -- \
    "$strata" eval --model "$work/lsum" --data "$work/sums.jsonl" --seq 3
# Packed rows (the default): said, and the eval loss is the padded rows'
# (each example attends only itself, from position 0); --pack is refused
# for data that is not examples, and a resumed run keeps its rows.
grep -q "^rows: packed" <<<"$out" || fail "training on JSON Lines does not say its rows are packed: $out"
a=$("$strata" eval --model "$work/lsum" --data "$work/sums.jsonl" --seq 12 --pack on 2>&1 | grep -o 'loss [0-9.]*')
b=$("$strata" eval --model "$work/lsum" --data "$work/sums.jsonl" --seq 12 --pack off 2>&1 | grep -o 'loss [0-9.]*')
[ -n "$a" ] && [ "$a" = "$b" ] || fail "eval of packed rows '$a', of one example a row '$b'"
expect 2 "--pack is for JSON Lines data" -- "$strata" train --pack on --steps 1
# Weights held in 16 bits for inference (--dtype; a float folder's rounded):
# the loss moves by about the rounding; an unknown type is refused.
a=$("$strata" eval --model "$work/lsum" --data "$work/sums.jsonl" --seq 12 --dtype fp32 2>&1 | grep -o 'loss [0-9.]*')
for t in bf16; do # (fp16: test_llama and test_gpt)
    b=$("$strata" eval --model "$work/lsum" --data "$work/sums.jsonl" --seq 12 --dtype $t 2>&1 | grep -o 'loss [0-9.]*')
    awk -v a="${a#loss }" -v b="${b#loss }" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d < 0.02 * a) }' ||
        fail "eval --dtype $t: '$b', fp32 '$a'"
done
expect 2 "bad value 'int8' for --dtype: bf16, fp16 or fp32" -- "$strata" generate --model "$work/lsum" --dtype int8
expect 2 "bad value 'yes' for --pack" -- "$strata" eval --model "$work/lsum" --data "$work/sums.jsonl" --pack yes
printf '{"text": "fine"}\n{"prompt": "a", "completion": 3}\n' >"$work/bad.jsonl"
expect 2 "bad.jsonl:2: \"completion\" is not a string" -- \
    "$strata" train --data "$work/bad.jsonl" --steps 1
# LoRA: adapters on the Llama run's weights (frozen), trained on the sums;
# the folder is a PEFT adapter (no config.json: not a whole model), whose
# loss through eval --adapter and through its merged folder is the same;
# stopped and resumed, the adapters and their moments are bitwise the
# uninterrupted run's.
lora=(--init "$work/la" --lora 4 --lora-alpha 8 --lora-targets q_proj,v_proj,down_proj --data "$work/sums.jsonl"
    --seq 8 --steps 30 --lr 1e-2 --warmup 5 --batch 8 --micro-batches 2 --eval-batches 2)
out=$("$strata" train "${lora[@]}" --out "$work/lora" --log-json "$work/lora.json" 2>&1) ||
    fail "train --lora failed: $out"
grep -q "parameters: [0-9,]*, of them [0-9,]* trained" <<<"$out" || fail "--lora does not say what trains: $out"
[ -f "$work/lora/adapter_config.json" ] && [ -f "$work/lora/adapter_model.safetensors" ] &&
    [ ! -e "$work/lora/config.json" ] || fail "--lora did not write a PEFT adapter folder: $(ls "$work/lora")"
grep -q '"r": 4' "$work/lora/adapter_config.json" && grep -q '"lora_alpha": 8' "$work/lora/adapter_config.json" &&
    grep -q '"down_proj"' "$work/lora/adapter_config.json" || fail "adapter_config.json: $(cat "$work/lora/adapter_config.json")"
# (the Llama run's head, trained 12 steps, is frozen: it bounds how far the
# loss can fall; peft's LoRA on the same folder stops near the same loss)
before=$("$strata" eval --model "$work/la" --data "$work/sums.jsonl" --seq 8 2>&1 | grep -o 'loss [0-9.]*')
after=$("$strata" eval --model "$work/la" --adapter "$work/lora" --data "$work/sums.jsonl" --seq 8 2>&1 |
    grep -o 'loss [0-9.]*')
awk -v a="${after#loss }" -v b="${before#loss }" 'BEGIN { exit !(a < b) }' ||
    fail "LoRA: the loss on the sums did not fall: '$before' -> '$after'"
"$strata" train "${lora[@]}" --stop-at 12 --out "$work/lora2" >/dev/null 2>&1 || fail "train --lora --stop-at failed"
out=$("$strata" train --resume "$work/lora2" 2>&1) || fail "resuming a LoRA run failed: $out"
cmp -s "$work/lora/adapter_model.safetensors" "$work/lora2/adapter_model.safetensors" ||
    fail "LoRA: resumed adapters differ from the uninterrupted run's"
cmp -s "$(newest "$work/lora" optimizer)" "$(newest "$work/lora2" optimizer)" ||
    fail "LoRA: resumed moments differ from the uninterrupted run's"
a=$("$strata" eval --model "$work/la" --adapter "$work/lora" --data "$work/sums.jsonl" --seq 8 2>&1 | grep -o 'loss [0-9.]*')
"$strata" merge --model "$work/la" --adapter "$work/lora" --out "$work/lora-merged" >/dev/null 2>&1 ||
    fail "merging the LoRA run failed"
b=$("$strata" eval --model "$work/lora-merged" --data "$work/sums.jsonl" --seq 8 2>&1 | grep -o 'loss [0-9.]*')
[ -n "$a" ] && [ "$a" = "$b" ] || fail "LoRA: eval --adapter '$a', of the merged folder '$b'"
expect 2 "holds LoRA adapters, not a whole model" -- "$strata" eval --model "$work/lora"
expect 2 "--lora adapts a trained model" -- "$strata" train --lora 4 --steps 1
expect 2 "--lora-alpha sets up LoRA adapters" -- "$strata" train --init "$work/la" --lora-alpha 4
expect 2 "'wq' is not a projection of a llama model" -- "$strata" train --init "$work/la" --lora 2 --lora-targets wq
expect 2 "--lora cannot be used with --resume" -- "$strata" train --resume "$work/lora2" --lora 2
expect 2 "--pack off: the checkpoint's rows were packed" -- "$strata" train --resume "$work/lora2" --pack off
expect 2 "holds LoRA adapters, not the model they adapt" -- "$strata" train --init "$work/lora" --lora 2 --steps 1
# GPT-2 (Conv1D weights): PEFT's fan_in_fan_out and GPT-2's module names.
expect 0 "of them 576 trained" -- "$strata" train --init "$work/a" --lora 2 --lora-targets c_attn,mlp.c_proj \
    --steps 2 --eval-batches 1 --out "$work/lora-gpt2"
grep -q '"fan_in_fan_out": true' "$work/lora-gpt2/adapter_config.json" ||
    fail "a GPT-2 adapter folder lacks fan_in_fan_out: $(cat "$work/lora-gpt2/adapter_config.json")"
expect 0 "2 weights (c_attn, c_proj)" -- "$strata" eval --model "$work/a" --adapter "$work/lora-gpt2"
# --config alone trains from random weights, and says so when weights lie beside it.
expect 0 "are not loaded: to start from them, give --init $work/la" -- \
    "$strata" train --config "$work/la/config.json" --steps 1 --eval-batches 1 --out "$work/lcfg"

# signal_run SIGNAL DIR: a long run into DIR (log DIR.log), sent SIGNAL once
# its log shows step 3; rc holds its exit code.
signal_run() {
    local sig=$1 dir=$2
    "$strata" train "${tiny[@]}" --steps 100000 --out "$dir" --log-every 1 >"$dir.log" 2>&1 &
    local job=$!
    for _ in $(seq 1 100); do
        grep -q "^step 3/" "$dir.log" 2>/dev/null && break
        sleep 0.1
    done
    kill "-$sig" "$job"
    wait "$job"
    rc=$?
}

# Ctrl-C: the step finishes, the checkpoint is written, exit 130, and it resumes.
signal_run INT "$work/int"
[ "$rc" = 130 ] || fail "Ctrl-C: exit $rc, expected 130: $(tail -3 "$work/int.log")"
grep -q "^interrupted: stopped after step" "$work/int.log" || fail "Ctrl-C: no interrupted line"
grep -q "^strata: stopping: finishing this step, then validating and saving to $work/int; Ctrl-C again quits" \
    "$work/int.log" || fail "Ctrl-C: not acknowledged: $(tail -5 "$work/int.log")"
[ -s "$(newest "$work/int" checkpoint)" ] || fail "Ctrl-C: no checkpoint saved"
stopped=$(sed -n 's/^interrupted: stopped after step \([0-9]*\).*/\1/p' "$work/int.log")
out=$("$strata" train --resume "$work/int" --stop-at $((stopped + 1)) 2>&1) ||
    fail "resuming the Ctrl-C checkpoint failed: $out"
grep -q "resuming at step $stopped of 100000" <<<"$out" || fail "Ctrl-C checkpoint does not resume: $out"

# SIGHUP (a closed terminal) is a Ctrl-C: the step finishes, it saves, exit 130.
signal_run HUP "$work/hup"
[ "$rc" = 130 ] || fail "SIGHUP: exit $rc, expected 130: $(tail -3 "$work/hup.log")"
[ -s "$(newest "$work/hup" checkpoint)" ] || fail "SIGHUP: no checkpoint saved"

# A reader that goes away: training goes on to its end and saves; exit 1 names the cut output.
"$strata" train "${tiny[@]}" --steps 30 --log-every 1 --out "$work/pipe" 2>"$work/pipe.err" | head -c 100 >/dev/null
rc=${PIPESTATUS[0]}
[ "$rc" = 1 ] || fail "a closed pipe: exit $rc, expected 1: $(tail -3 "$work/pipe.err")"
grep -q "cannot write to standard output: Broken pipe" "$work/pipe.err" ||
    fail "a closed pipe was not reported: $(tail -3 "$work/pipe.err")"
"$strata" eval --model "$work/pipe" 2>&1 | grep -q "step 30 " || fail "a closed pipe: the run did not reach step 30 and save"

# One writer per run folder: a second `train --out D` is refused at once,
# naming the holder; readers (eval) during saves never fail; the lock goes
# with the run; a lock file left by a process that died does not stop the next.
"$strata" train "${tiny[@]}" --steps 100000 --out "$work/lock" --save-every 1 --log-every 1 \
    >"$work/lock.log" 2>&1 &
job=$!
for _ in $(seq 1 100); do
    grep -q "^saved step 3 " "$work/lock.log" 2>/dev/null && break
    sleep 0.1
done
expect 2 "run folder '$work/lock' is in use by another \`strata train\` (pid $job on" -- \
    "$strata" train --layers 2 --embd 16 --heads 2 --batch 4 --steps 5 --out "$work/lock"
expect 2 "is in use by another" -- "$strata" train --resume "$work/lock" --force
readers=0
for _ in $(seq 1 20); do
    "$strata" eval --model "$work/lock" >/dev/null 2>"$work/reader.err" ||
        { readers=$((readers + 1)); cat "$work/reader.err" >&2; }
done
[ "$readers" = 0 ] || fail "$readers of 20 readers failed during saves"
kill -TERM "$job"
wait "$job"
[ $? = 130 ] || fail "the locked run did not stop cleanly: $(tail -3 "$work/lock.log")"
[ ! -e "$work/lock/.strata-lock" ] || fail "the run left its lock file"
grep -q "^saved step 4 " "$work/lock.log" || fail "the locked run's saves went missing: $(tail -5 "$work/lock.log")"
printf 'pid 999999 on nowhere, since long ago\n' >"$work/lock/.strata-lock"
stopped=$(sed -n 's/^interrupted: stopped after step \([0-9]*\).*/\1/p' "$work/lock.log")
expect 0 "resuming from $work/lock" -- "$strata" train --resume "$work/lock" --stop-at $((stopped + 1))

# A run that fails before its first save leaves no folder behind (a new run
# folder per mistake piled up under runs/).
expect 2 "cannot open data file" -- env STRATA_RUNS_DIR="$work/runs" "$strata" train --data "$work/missing.txt"
expect 2 "no gpu device found" -- env STRATA_RUNS_DIR="$work/runs" "$strata" train --devices gpu --steps 1
expect 2 "cannot open data file" -- "$strata" train --data "$work/missing.txt" --out "$work/new/out"
[ ! -e "$work/runs" ] && [ ! -e "$work/new/out" ] || fail "a failed run left folders: $(ls -R "$work/runs" "$work/new" 2>&1)"

# A disk without room for one save is said at the start, not at the first
# save: refused with --save-every, a warning without (800 G parameters need
# about 8.8 TiB per save; the model is described, nothing allocated).
huge=(--layers 1000 --embd 8192 --heads 64 --steps 1)
expect 2 "each save of this model needs about" -- "$strata" train "${huge[@]}" --save-every 1 --out "$work/huge"
out=$("$strata" train "${huge[@]}" --out "$work/huge" 2>&1)
grep -q "warning: --out '$work/huge' has .* free, and the save at the end needs about" <<<"$out" ||
    fail "no free-space warning at the start: $out"
[ ! -e "$work/huge" ] || fail "a refused run left its --out"

# Generation: the prompt comes back, one seed gives one text, tokens/s reported.
out1=$("$strata" generate --model "$work/a" --prompt "123+456=" -n 4 --seed 3 2>"$work/gen.err") ||
    fail "generate failed: $(cat "$work/gen.err")"
out2=$("$strata" generate --model "$work/a" --prompt "123+456=" -n 4 --seed 3 2>/dev/null)
[ "$out1" = "$out2" ] || fail "generate with one seed differs: '$out1' vs '$out2'"
out3=$("$strata" generate -m "$work/a" -p "123+456=" -n 4 --seed 3 2>/dev/null)
[ "$out1" = "$out3" ] || fail "generate -m/-p differs from --model/--prompt: '$out1' vs '$out3'"
[[ "$out1" == "123+456="* ]] || fail "generate does not start with the prompt: '$out1'"
grep -qE 'generated 4 tokens in [0-9.]+ s \| [0-9.]+ tok/s' "$work/gen.err" ||
    fail "generate did not report tokens/s: $(cat "$work/gen.err")"
out=$("$strata" generate --model "$work/a" --prompt "1" -n 50 --temperature 0 2>&1) ||
    fail "greedy generate failed: $out"
grep -q "the text outgrew the model's 12 positions: 6 times the context slid to its last 6 tokens" \
    <<<"$out" || fail "no note on the sliding context: $out"
[ "$(head -c 51 <<<"$out" | wc -c)" = 51 ] || fail "-n 50 beyond the positions did not give 50 tokens: $out"
# After a slide the model sees the last 6 tokens from position 0: the next
# token is the one a prompt of those 6 tokens gives (greedy, bytes compared).
python3 - "$strata" "$work/a" <<'PY' || fail "the sliding context does not continue as a 6-token prompt does"
import subprocess, sys
strata, model = sys.argv[1], sys.argv[2]
def gen(prompt, n):
    return subprocess.run([strata, "generate", "-m", model, "-p", prompt, "-n", str(n),
                           "--temperature", "0"], capture_output=True, check=True).stdout
text = gen(b"1", 20)
# 1 + 12 tokens fill the 12 positions; the 14th token (index 13) comes from text[7:13].
window = text[7:13]
assert b"\0" not in window
assert gen(window, 1)[6:7] == text[13:14], (text, window)
PY
out=$("$strata" generate -m "$work/a" -p "1" -p "22" -n 3 2>/dev/null)
[ "$(grep -c '^--- [12] of 2 ---$' <<<"$out")" = 2 ] || fail "several prompts without a header each: '$out'"
expect 2 "--model DIR is required" -- "$strata" generate --prompt x
expect 2 "does not exist" -- "$strata" generate --model "$work/none"
expect 2 "at most 12" -- "$strata" generate --model "$work/a" --prompt "0123456789abc"

# --profile: a table per device of where a step's time goes, the launches a
# block costs, the same as JSON lines in --log-json; shares add up to 100%.
out=$("$strata" train "${tiny[@]}" --steps 4 --profile --log-json "$work/prof.json" \
    --out "$work/prof" 2>&1) || fail "train --profile failed: $out"
grep -qE "^profile of device 0 .*: [0-9.]+ ms of device time per step \([0-9]+% of the [0-9.]+ ms step\), [0-9]+ launches per step, over 3 steps:$" \
    <<<"$out" || fail "no profile heading: $out"
grep -qE "^op +launches/step +ms/step +share +GB/s +GFLOPS$" <<<"$out" || fail "no profile table: $out"
grep -qE "^gemm NT +[0-9.]+ +[0-9.]+ +[0-9.]+% +[0-9.]+ +[0-9.]+$" <<<"$out" || fail "no GEMM row with GFLOPS: $out"
grep -qE "^layernorm_fwd(_row)? +[0-9.]+ " <<<"$out" || fail "no kernel row: $out"
n=$(sed -n 's/^launches per block per micro-batch: \([0-9]*\) .*/\1/p' <<<"$out")
[ -n "$n" ] && [ "$n" -ge 5 ] && [ "$n" -le 100 ] || fail "launches per block: '$n' in $out"
python3 - "$work/prof.json" <<'PY' || fail "the JSON log lacks a consistent profile"
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
prof = [e for e in ev if e["event"] == "profile"]
assert len(prof) == 1 and prof[0]["steps"] == 3
ops = prof[0]["ops"]
assert abs(sum(o["ms"] for o in ops) / 3 - prof[0]["ms_per_step"]) < 1e-3 * prof[0]["ms_per_step"] + 1e-6
assert any(o["op"].startswith("gemm") and o["flops"] > 0 for o in ops)
assert all(o["launches"] % 3 == 0 for o in ops if not o["op"].startswith("copy")), ops
assert [e for e in ev if e["event"] == "profile_blocks"]
PY

# The two forms of the row kernels (a work-group per row for GPUs, a
# work-item per row for CPUs) train to the same losses, up to the order of sums.
for form in gpu cpu; do
    STRATA_KERNEL_FORM=$form "$strata" train "${tiny[@]}" --steps 8 --log-json "$work/form-$form.json" \
        --out "$work/form-$form" >/dev/null 2>&1 || fail "training with STRATA_KERNEL_FORM=$form failed"
done
python3 - "$work/form-gpu.json" "$work/form-cpu.json" <<'PY' || fail "the GPU and CPU kernel forms train apart"
import json, sys
def losses(p):
    return [json.loads(l)["loss"] for l in open(p) if json.loads(l)["event"] == "step"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) == 8, (a, b)
for x, y in zip(a, b):
    assert abs(x - y) <= 1e-5 * max(abs(x), abs(y)), (a, b)
PY

# Evaluation.
expect 0 "exact match" -- "$strata" eval --model "$work/a"

# Text data: train and evaluate on a file.
for i in $(seq 1 200); do echo "the quick brown fox jumps over the lazy dog $i"; done >"$work/text.txt"
expect 0 "perplexity" -- "$strata" train --data "$work/text.txt" "${tiny[@]}" --seq 16 --steps 5 --out "$work/t"
expect 0 "perplexity" -- "$strata" eval --model "$work/t" --data "$work/text.txt"
expect 2 "longer than the model's 16 positions" -- "$strata" eval --model "$work/t" --data "$work/text.txt" --seq 32
# uint16 token files: tokens above the vocabulary are refused.
printf '\x01\x00\x02\x00\x03\x00\x2c\x01' >"$work/tok.bin"
for i in $(seq 1 6); do cat "$work/tok.bin" "$work/tok.bin" >"$work/tok2.bin"; mv "$work/tok2.bin" "$work/tok.bin"; done
expect 2 "tokens up to 300; the model's vocabulary is 256" -- "$strata" eval --model "$work/t" --data "$work/tok.bin"
expect 0 "step 2/2" -- "$strata" train --data "$work/tok.bin" "${tiny[@]}" --seq 8 --steps 2

# Bad input: exit 2 and a message that names the problem.
expect 2 "cannot open data file" -- "$strata" train --data "$work/missing.txt"
expect 2 "is not a file" -- "$strata" train --data "$work"
expect 2 "cannot create folder" -- "$strata" train --out /proc/strata-nope --steps 1
: >"$work/empty.txt"
expect 2 "too few to split" -- "$strata" train --data "$work/empty.txt"
expect 2 "sequences of 12 tokens" -- "$strata" train --seq 10
expect 2 "bad value 'x' for --steps" -- "$strata" train --steps x
expect 2 "unknown option --nope" -- "$strata" train --nope
expect 2 "not divisible" -- "$strata" train --embd 30 --heads 4 --steps 1
cp -r "$work/a" "$work/bad"
head -c 100 "$(newest "$work/a" model)" >"$(newest "$work/bad" model)"
expect 2 "holds no complete checkpoint (step 20: model-step00000020-" -- "$strata" generate --model "$work/bad"
cp -r "$work/a" "$work/wrong"
sed -i 's/"n_embd": 32/"n_embd": 64/' "$(newest "$work/wrong" checkpoint)"
expect 2 "the model needs [256, 64]" -- "$strata" generate --model "$work/wrong"
# A folder in the Hugging Face layout (no manifest): config.json and model.safetensors.
mkdir "$work/hf"
cp "$work/a/config.json" "$work/hf/"
head -c 100 "$(newest "$work/a" model)" >"$work/hf/model.safetensors"
expect 2 "not a valid safetensors file" -- "$strata" generate --model "$work/hf"
cp "$(newest "$work/a" model)" "$work/hf/model.safetensors"
expect 0 "123" -- "$strata" generate --model "$work/hf" --prompt "123" -n 2
expect 2 "no checkpoint manifest" -- "$strata" train --resume "$work/hf"
# ... and starts a run with --init (step 0: its weights, no training state).
expect 0 "starting from $work/hf: config.json and its weights" -- \
    "$strata" train --init "$work/hf" --steps 2 --eval-batches 1 --out "$work/hfi"

# --keep 2 keeps two complete saves; a damaged newest save is passed over with a
# warning naming the file and the step, and eval and --resume use the one before.
"$strata" train "${tiny[@]}" --steps 6 --save-every 2 --keep 2 --out "$work/k2" >/dev/null 2>&1 || fail "keep 2: run"
[ "$(ls "$work/k2" | grep -c '^checkpoint-step')" = 2 ] || fail "keep 2: not two manifests: $(ls "$work/k2")"
ls "$work/k2" | grep -q '^checkpoint-step00000004-' && ls "$work/k2" | grep -q '^checkpoint-step00000006-' ||
    fail "keep 2: not the saves of steps 4 and 6: $(ls "$work/k2")"
[ "$(ls "$work/k2" | grep -c '^model-step')" = 2 ] || fail "keep 2: old shards were not removed: $(ls "$work/k2")"
m6=$(newest "$work/k2" model)
printf 'X' | dd of="$m6" bs=1 seek=100 conv=notrunc 2>/dev/null
out=$("$strata" eval --model "$work/k2" 2>&1) || fail "keep 2: eval after damage failed: $out"
grep -q "passing over newer saves that are not complete (step 6: $(basename "$m6") does not hold what the manifest recorded" <<<"$out" ||
    fail "keep 2: no warning naming the damaged file and step: $out"
grep -q "model: .*, step 4 " <<<"$out" || fail "keep 2: eval did not fall back to step 4: $out"
out=$("$strata" train --resume "$work/k2" --steps 6 2>&1) || fail "keep 2: resume after damage failed: $out"
grep -q "resuming at step 4 of 6" <<<"$out" || fail "keep 2: resume did not fall back to step 4: $out"

# Nothing thrown away. A run without --out saves to a new folder under
# $STRATA_RUNS_DIR and says so; a resume saves back to its folder.
out=$(STRATA_RUNS_DIR="$work/runs" "$strata" train "${tiny[@]}" --steps 2 2>&1) || fail "default folder: $out"
grep -q "^saving to $work/runs/[0-9]\{8\}-[0-9]\{6\} (a new run folder" <<<"$out" || fail "default folder: not said: $out"
[ -s "$(newest "$(ls -d "$work"/runs/* | head -1)" checkpoint)" ] || fail "default folder: nothing saved there"
"$strata" train "${tiny[@]}" --steps 4 --stop-at 2 --out "$work/back" >/dev/null 2>&1 || fail "save back: first run"
"$strata" train --resume "$work/back" >/dev/null 2>&1 || fail "save back: resume failed"
ls "$work/back" | grep -q '^checkpoint-step00000004-' || fail "a resume did not save back to its folder: $(ls "$work/back")"
# Another run's checkpoint is not written over without --force; model flags with --resume are refused.
expect 2 "holds the checkpoint of another run (step 4" -- "$strata" train "${tiny[@]}" --steps 2 --out "$work/back"
expect 0 "saved step 2" -- "$strata" train "${tiny[@]}" --steps 2 --out "$work/back" --force
expect 2 "--layers cannot be used with --resume" -- "$strata" train --resume "$work/back" --layers 3
expect 2 "--config cannot be used with --resume" -- "$strata" train --resume "$work/back" --config "$work/a/config.json"
# The data file is recorded by absolute path, size and checksum: a resume works from another
# folder; a moved file is named, and found again with --data; a changed one is refused.
mkdir -p "$work/d1" "$work/d2"
for i in $(seq 1 100); do echo "pack my box with five dozen liquor jugs $i"; done >"$work/d1/text.txt"
(cd "$work/d1" && "$strata" train "${tiny[@]}" --data text.txt --seq 16 --steps 4 --stop-at 2 --out ../dck >/dev/null 2>&1) ||
    fail "data: first run"
out=$(cd "$work/d2" && "$strata" train --resume ../dck --stop-at 3 2>&1) || fail "resume from another folder: $out"
grep -q "resuming at step 2 of 4" <<<"$out" || fail "resume from another folder: $out"
mv "$work/d1/text.txt" "$work/d2/moved.txt"
expect 2 "trained on '$work/d1/text.txt', which is not there any more" -- "$strata" train --resume "$work/dck"
expect 0 "resuming at step 3 of 4" -- "$strata" train --resume "$work/dck" --data "$work/d2/moved.txt"
echo "changed" >>"$work/d2/moved.txt"
expect 2 "is not the data the checkpoint was trained on" -- "$strata" train --resume "$work/dck" --data "$work/d2/moved.txt" --steps 5

# NaN or infinity: an injected NaN gradient at step 3 stops the run (exit 1, the
# stage named, no update, nothing saved); with --on-nan skip the step is passed over.
"$strata" train "${tiny[@]}" --steps 6 --stop-at 2 --out "$work/nan" >/dev/null 2>&1 || fail "nan: first run"
out=$(STRATA_TEST_NAN_AT=3:0 "$strata" train --resume "$work/nan" --out "$work/nan" 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "nan abort: exit $rc, expected 1: $out"
grep -q "step 3: the loss .* is not finite; first found at stage 0 .*gradient of 'wte.weight'" <<<"$out" ||
    fail "nan abort: no message naming the step and stage: $out"
[ "$(ls "$work/nan" | grep -c '^checkpoint-step')" = 1 ] && ls "$work/nan" | grep -q '^checkpoint-step00000002-' ||
    fail "nan abort: the checkpoint changed: $(ls "$work/nan")"
out=$(STRATA_TEST_NAN_AT=3:0 "$strata" train --resume "$work/nan" --out "$work/nan" --on-nan skip 2>&1) ||
    fail "nan skip: the run failed: $out"
grep -q "^step 3/6 | loss [0-9.]* | skipped: not finite" <<<"$out" || fail "nan skip: no skipped line: $out"
grep -q "^step 4/6 | loss [0-9.]* | norm" <<<"$out" || fail "nan skip: the run did not go on: $out"
# A model whose weights are NaN: warnings, and eval does not print a finite loss as if all were well.
mkdir "$work/nanw"
cp "$work/a/config.json" "$work/nanw/"
m=$(newest "$work/a" model)
hlen=$(od -An -tu8 -N8 "$m" | tr -d ' ')
{ head -c $((8 + hlen)) "$m"; head -c $(($(stat -c %s "$m") - 8 - hlen)) /dev/zero | tr '\0' '\377'; } \
    >"$work/nanw/model.safetensors"
out=$("$strata" eval --model "$work/nanw" 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "eval of NaN weights: exit $rc, expected 1: $out"
grep -q "tensor 'wte.weight' holds .* NaN or infinite" <<<"$out" || fail "eval of NaN weights: no warning: $out"
grep -q "the loss is not finite" <<<"$out" || fail "eval of NaN weights: no error: $out"
# A JSON log that cannot be written (a full disk): said at once, the run saves, exit 1.
out=$("$strata" train "${tiny[@]}" --steps 2 --log-json /dev/full --out "$work/full" 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "--log-json on a full disk: exit $rc, expected 1: $out"
grep -q "cannot write the JSON log '/dev/full': No space left on device" <<<"$out" ||
    fail "--log-json on a full disk: no message: $out"
[ -s "$(newest "$work/full" checkpoint)" ] || fail "--log-json on a full disk: the model was not saved"

"$strata" train --help | grep -q -- "--resume DIR" || fail "train --help lacks --resume"
"$strata" generate --help | grep -q -- "--top-k" || fail "generate --help lacks --top-k"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all train/generate/eval checks passed"
