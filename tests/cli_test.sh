#!/usr/bin/env bash
# cli_test.sh STRATA - the `strata` command as a user meets it: help, exit
# codes, device choices (good and bad), JSON output, the GEMM check, and the
# messages for a missing driver, a missing kernel file and a broken kernel.
# Exits 77 (skip) when no OpenCL device exists.
set -u
strata=$1
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# expect CODE NAME -- command...: runs it, keeps stdout/stderr in $tmp/out, $tmp/err.
expect() {
    local want=$1 name=$2
    shift 3
    "$@" >"$tmp/out" 2>"$tmp/err"
    local got=$?
    if [ "$got" != "$want" ]; then
        echo "FAIL $name: exit $got, wanted $want"
        sed 's/^/  stdout: /' "$tmp/out" | head -20
        sed 's/^/  stderr: /' "$tmp/err" | head -20
        fails=$((fails + 1))
        return 1
    fi
    echo "ok   $name"
}

# grep_in FILE PATTERN NAME
grep_in() {
    if ! grep -q -- "$2" "$1"; then
        echo "FAIL $3: '$2' not in $(basename "$1"):"
        sed 's/^/  /' "$1" | head -20
        fails=$((fails + 1))
    fi
}

if ! "$strata" devices >/dev/null 2>&1; then
    echo "skip: no OpenCL device"
    exit 77
fi
ndev=$("$strata" devices --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')

expect 0 "help" -- "$strata" --help
grep_in "$tmp/out" "devices" "help lists devices"
grep_in "$tmp/out" "check" "help lists check"
expect 2 "no command" -- "$strata"
expect 2 "unknown command" -- "$strata" frobnicate
grep_in "$tmp/err" "unknown command 'frobnicate'" "unknown command named"
expect 0 "version" -- "$strata" --version
grep_in "$tmp/out" "MPI support" "version says MPI"
expect 0 "devices help" -- "$strata" devices --help
grep_in "$tmp/out" "\-\-json" "devices help names --json"
expect 0 "help devices" -- "$strata" help devices
grep_in "$tmp/out" "usage: strata devices" "help devices"

expect 0 "devices table" -- "$strata" devices
grep_in "$tmp/out" "OpenCL C" "table header"
rows=$(($(wc -l <"$tmp/out") - 1))
[ "$rows" = "$ndev" ] || { echo "FAIL table has $rows rows for $ndev devices"; fails=$((fails + 1)); }

expect 0 "devices json" -- "$strata" devices --json
python3 - "$tmp/out" <<'PY' || { echo "FAIL json fields"; fails=$((fails + 1)); }
import json, sys
devs = json.load(open(sys.argv[1]))
need = {"index", "platform", "vendor", "name", "type", "compute_units", "clock_mhz",
        "global_mem_bytes", "max_alloc_bytes", "local_mem_bytes", "opencl_c_version",
        "fp16", "fp64", "driver_version"}
for d in devs:
    missing = need - set(d)
    assert not missing, missing
    assert d["global_mem_bytes"] > 0 and d["compute_units"] > 0
assert [d["index"] for d in devs] == list(range(len(devs)))
PY

last=$((ndev - 1))
expect 0 "choose last by index" -- "$strata" devices --devices "$last" --json
python3 -c "import json,sys; d=json.load(open('$tmp/out')); assert [x['index'] for x in d]==[$last]" ||
    { echo "FAIL index choice"; fails=$((fails + 1)); }
type0=$("$strata" devices --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["type"])')
expect 0 "choose by type" -- "$strata" devices --devices "$type0"
expect 2 "index out of range" -- "$strata" devices --devices 99
grep_in "$tmp/err" "out of range" "out of range message"
grep_in "$tmp/err" "  0: " "message lists the devices"
expect 2 "no such name" -- "$strata" devices --devices no-such-card
grep_in "$tmp/err" "no-such-card" "name in message"
expect 2 "env choice" -- env STRATA_DEVICES=42 "$strata" devices
grep_in "$tmp/err" "index 42" "env choice message"
expect 0 "flag beats env" -- env STRATA_DEVICES=42 "$strata" devices --devices 0
expect 2 "no platform" -- env OCL_ICD_VENDORS="$tmp/none" "$strata" devices
grep_in "$tmp/err" "no OpenCL platform" "no platform message"
grep_in "$tmp/err" "pocl-opencl-icd" "no platform says what to install"
expect 2 "unknown option" -- "$strata" devices --bogus
grep_in "$tmp/err" "unknown option --bogus" "unknown option named"
expect 2 "missing value" -- "$strata" devices --devices

expect 0 "check" -- "$strata" check --size 128
grep_in "$tmp/out" "all passed on $ndev device" "check passed"
grep_in "$tmp/out" "GFLOPS" "check times a GEMM"
expect 2 "check bad size" -- "$strata" check --size lots

expect 2 "missing kernel dir" -- env STRATA_CL_DIR="$tmp/none" "$strata" check --size 0
grep_in "$tmp/err" "$tmp/none/fill.cl" "missing kernel path"
mkdir -p "$tmp/cl"
printf '__kernel void fill_f32(__global float *x) { x[0] = not_declared; }\n' >"$tmp/cl/fill.cl"
expect 1 "broken kernel" -- env STRATA_CL_DIR="$tmp/cl" "$strata" check --size 0
grep_in "$tmp/err" "build log" "build log shown"
grep_in "$tmp/err" "not_declared" "compiler's words shown"

# tune: the budgeted search reports where it started and what it kept, in a
# cache of its own; the two ways of tuning are not mixed.
expect 2 "tune with --budget and --fraction" -- "$strata" tune --budget 5 --fraction 0.01
grep_in "$tmp/err" "give one" "tune says to choose one way"
expect 0 "tune --budget" -- env STRATA_CACHE_DIR="$tmp/tunecache" "$strata" tune --devices 0 --budget 4 --size 64
grep_in "$tmp/out" "searching for 4 s" "tune says its budget"
grep_in "$tmp/out" "Xgemm over 64x64x64 and 32x256x64: .* GFLOPS before, .* after" "tune reports before and after"
grep_in "$tmp/out" "XgemmDirect over" "tune does both kernels"

# Model families: --arch and its sizes; a Llama model trains, generates,
# evaluates and plans; mistaken combinations are refused by name.
printf 'the quick brown fox jumps over the lazy dog\n%.0s' $(seq 1 60) >"$tmp/text.txt"
expect 2 "--kv-heads without --arch llama" -- "$strata" train --kv-heads 2 --steps 1
grep_in "$tmp/err" "add --arch llama" "--kv-heads needs the Llama family"
expect 2 "unknown --arch" -- "$strata" train --arch bert --steps 1
grep_in "$tmp/err" "unknown --arch 'bert'" "unknown --arch named"
expect 2 "--kv-heads not dividing --heads" -- "$strata" train --arch llama --heads 4 --kv-heads 3 --steps 1
grep_in "$tmp/err" "not a multiple of num_key_value_heads" "grouping explained"
expect 0 "llama train" -- "$strata" train --arch llama --kv-heads 2 --layers 2 --embd 32 --heads 4 \
    --data "$tmp/text.txt" --seq 16 --batch 4 --steps 4 --eval-every 0 --out "$tmp/llama"
grep_in "$tmp/out" "llama (Llama family), 2 layers, 32 channels, 4 heads (2 key/value)" "llama model line"
grep_in "$tmp/out" "layers.0-1" "plan names Llama blocks"
grep_in "$tmp/llama/config.json" '"model_type": "llama"' "Llama config.json written"
expect 2 "--config with sizes" -- "$strata" train --config "$tmp/llama/config.json" --layers 3
grep_in "$tmp/err" "\-\-layers cannot be used with --config" "--config with a size flag refused"
expect 0 "llama generate" -- "$strata" generate --model "$tmp/llama" --prompt "the" -n 5
# A prompt read in passes (of 5, 5 and 3 tokens, then the last) or token by
# token: the same greedy text (the model has 16 positions: it slides too).
long="the quick brow"
expect 0 "prefill" -- "$strata" generate --model "$tmp/llama" --prompt "$long" -n 8 --temperature 0 --prefill 5
cp "$tmp/out" "$tmp/prefill.out"
expect 0 "token by token" -- "$strata" generate --model "$tmp/llama" --prompt "$long" -n 8 --temperature 0 --prefill 1
cmp -s "$tmp/out" "$tmp/prefill.out" ||
    { echo "FAIL prefill changed the text: $(cat "$tmp/prefill.out") vs $(cat "$tmp/out")"; fails=$((fails + 1)); }
expect 2 "--prefill 0" -- "$strata" generate --model "$tmp/llama" --prefill 0
grep_in "$tmp/err" "bad value '0' for --prefill" "--prefill 0 refused"
# Sampling: a top-p or min-p that keeps only the likeliest token is greedy
# whatever the seed; the defaults of the new settings draw as before
# (test_sample checks each setting's distribution and the penalty); --stop
# ends a text once its generated part holds the string (shown);
# --prompt-file (a file, or - for standard input) is a --prompt.
gen() { "$strata" generate --model "$tmp/llama" --prompt "the" -n 12 "$@" 2>/dev/null; }
greedy=$(gen --temperature 0)
[ "$(gen --seed 5 --top-p 1e-9)" = "$greedy" ] || { echo "FAIL --top-p 1e-9 is not greedy"; fails=$((fails + 1)); }
[ "$(gen --seed 6 --min-p 1)" = "$greedy" ] || { echo "FAIL --min-p 1 is not greedy"; fails=$((fails + 1)); }
[ "$(gen --seed 7)" = "$(gen --seed 7 --top-p 1 --min-p 0 --repeat-penalty 1)" ] ||
    { echo "FAIL the new settings' defaults changed the draws"; fails=$((fails + 1)); }
stop=${greedy:5:2} # two characters the greedy text generates (after "the" and a token)
stopped=$(gen --temperature 0 --stop "$stop")
want="${greedy:0:3}$(cut="${greedy:3}"; echo "${cut%%"$stop"*}")$stop"
[ "$stopped" = "$want" ] || { echo "FAIL --stop '$stop': '$stopped', expected '$want'"; fails=$((fails + 1)); }
printf 'the' >"$tmp/prompt.txt"
[ "$("$strata" generate --model "$tmp/llama" --prompt-file "$tmp/prompt.txt" -n 12 --temperature 0 2>/dev/null)" = "$greedy" ] &&
    [ "$(printf 'the' | "$strata" generate --model "$tmp/llama" --prompt-file - -n 12 --temperature 0 2>/dev/null)" = "$greedy" ] ||
    { echo "FAIL --prompt-file differs from --prompt"; fails=$((fails + 1)); }
expect 2 "--top-p 0" -- "$strata" generate --model "$tmp/llama" --top-p 0
grep_in "$tmp/err" "bad value '0' for --top-p" "--top-p 0 refused"
expect 2 "empty --stop" -- "$strata" generate --model "$tmp/llama" --stop ""
grep_in "$tmp/err" "--stop needs a non-empty text" "an empty --stop refused"
expect 2 "missing --prompt-file" -- "$strata" generate --model "$tmp/llama" --prompt-file "$tmp/none.txt"
grep_in "$tmp/err" "cannot open prompt" "a missing --prompt-file named"
expect 0 "llama eval" -- "$strata" eval --model "$tmp/llama" --data "$tmp/text.txt" --seq 16
grep_in "$tmp/out" "perplexity" "llama eval prints perplexity"
expect 0 "plan --arch llama" -- "$strata" plan --arch llama --kv-heads 1 --heads 2 --inference
grep_in "$tmp/out" "MLP 192" "plan shows the Llama MLP width"

# tokenize: text to ids and back with the committed test tokenizers; bad
# tokenizers refused by name.
toks="$STRATA_SOURCE_ROOT/tests/data/tokenizers"
if [ -d "$toks" ]; then
    expect 0 "tokenize --count" -- "$strata" tokenize --tokenizer "$toks/llama3.json" --count "$toks/test.txt"
    grep_in "$tmp/out" "tokens, 3232 bytes" "tokenize counts"
    # byte level: the ids decode to exactly the text
    expect 0 "tokenize ids" -- "$strata" tokenize --tokenizer "$toks/llama3.json" "$toks/test.txt"
    cp "$tmp/out" "$tmp/ids.txt"
    expect 0 "tokenize --decode" -- "$strata" tokenize --tokenizer "$toks/llama3.json" --decode "$tmp/ids.txt"
    cmp -s "$tmp/out" "$toks/test.txt" || { echo "FAIL tokenize: ids do not decode to the text"; fails=$((fails + 1)); }
    expect 0 "tokenize GPT-2 vocab.json" -- "$strata" tokenize --tokenizer "$toks/gpt2" --count "$toks/test.txt"
    printf '{"model": {"type": "WordPiece", "vocab": {}}}' >"$tmp/wp.json"
    expect 2 "tokenize WordPiece" -- "$strata" tokenize --tokenizer "$tmp/wp.json" "$toks/test.txt"
    grep_in "$tmp/err" 'model type "WordPiece" is not supported' "WordPiece refused by name"
    # text -> token file -> a model -> generation with the tokenizer
    expect 0 "tokenize --out" -- "$strata" tokenize --tokenizer "$toks/llama3.json" --out "$tmp/tok.bin" \
        "$toks/test.txt" "$tmp/text.txt"
    grep_in "$tmp/out" "tokens from 2 files (vocabulary 1500)" "tokenize --out says what it wrote"
    expect 0 "train on a token file" -- "$strata" train --arch llama --kv-heads 2 --layers 1 --embd 32 \
        --heads 4 --data "$tmp/tok.bin" --vocab 1500 --seq 16 --batch 4 --steps 3 --eval-every 0 \
        --out "$tmp/tokm"
    grep_in "$tmp/out" "llm.c format" "the token file is read as llm.c's"
    cp "$toks/llama3.json" "$tmp/tokm/tokenizer.json"
    expect 0 "generate with the folder's tokenizer" -- "$strata" generate --model "$tmp/tokm" \
        --prompt "Hello wörld" -n 5
    grep_in "$tmp/out" "Hello wörld" "the prompt printed as text"
    want=$(printf 'Hello wörld' | "$strata" tokenize --tokenizer "$toks/llama3.json" --template | wc -w)
    grep_in "$tmp/err" "prompt: $want tokens" "the prompt tokenized as the tokenizer does, BOS first"
    # A padded vocabulary (the model's 1500 ids, the tokenizer's 1400), whose
    # byte tokens are marked special: ids past the tokenizer are never
    # sampled, and byte tokens print their characters, as valid UTF-8.
    mkdir "$tmp/padm"
    cp "$tmp/tokm"/* "$tmp/padm/"
    cp "$toks/sentencepiece.json" "$tmp/padm/tokenizer.json"
    for seed in 1 2 3; do
        expect 0 "generate with a padded vocabulary (seed $seed)" -- "$strata" generate \
            --model "$tmp/padm" --prompt "naïve ёж 字" -n 40 --temperature 1.5 --top-k 0 --seed $seed
        grep_in "$tmp/err" "padded past the tokenizer's 1400 ids" "a padded vocabulary said"
        grep_in "$tmp/out" "naïve ёж 字" "characters of byte tokens printed"
        iconv -f UTF-8 -t UTF-8 "$tmp/out" >/dev/null 2>&1 ||
            { echo "FAIL generate printed invalid UTF-8"; fails=$((fails + 1)); }
    done
    expect 2 "tokenizer larger than the model" -- "$strata" generate --model "$tmp/llama" \
        --tokenizer "$toks/llama3.json" --prompt "Hello" -n 2
    grep_in "$tmp/err" "outside the model's vocabulary" "tokenizer/model mismatch named"
    # a text file through a tokenizer: trained on, kept with the model, evaluated, resumed
    cat "$toks/test.txt" "$toks/test.txt" "$toks/test.txt" >"$tmp/text3.txt"
    expect 0 "train on text with --tokenizer" -- "$strata" train --arch llama --layers 1 --embd 32 \
        --heads 4 --data "$tmp/text3.txt" --tokenizer "$toks/llama3.json" --seq 16 --batch 4 \
        --steps 2 --eval-every 0 --eval-batches 1 --out "$tmp/textm"
    grep_in "$tmp/out" "by the tokenizer (vocabulary 1500)" "the text is tokenized"
    grep_in "$tmp/out" "vocabulary 1500" "the model takes the tokenizer's vocabulary"
    cmp -s "$toks/llama3.json" "$tmp/textm/tokenizer.json" ||
        { echo "FAIL the tokenizer is not kept in --out"; fails=$((fails + 1)); }
    ntok=$("$strata" tokenize --tokenizer "$toks/llama3.json" --template "$tmp/text3.txt" | wc -w)
    expect 0 "eval a text with the folder's tokenizer" -- "$strata" eval --model "$tmp/textm" \
        --data "$tmp/text3.txt" --seq 16
    grep_in "$tmp/err" "$ntok tokens of" "eval reads the text as the tokenizer's tokens"
    grep_in "$tmp/err" "eval scores all of it" "eval says it scores the whole file"
    expect 2 "eval of a text model without --data" -- "$strata" eval --model "$tmp/textm"
    grep_in "$tmp/err" "give --data with a text or token file" "no silent addition task for a text model"
    expect 0 "resume a text run (the folder's tokenizer)" -- "$strata" train --resume "$tmp/textm" \
        --steps 3
    grep_in "$tmp/out" "step 3/3" "the resumed text run goes on"
    expect 2 "resume with another tokenizer" -- "$strata" train --resume "$tmp/textm" --steps 4 \
        --tokenizer "$toks/gpt2"
    grep_in "$tmp/err" "tokenized by a tokenizer, this run's by another" "a changed tokenizer named"
    cmp -s "$toks/llama3.json" "$tmp/textm/tokenizer.json" ||
        { echo "FAIL a refused resume replaced the folder's tokenizer"; fails=$((fails + 1)); }
    expect 2 "--tokenizer with the addition task" -- "$strata" train --tokenizer "$toks/llama3.json" \
        --steps 1 --out "$tmp/addtok"
    grep_in "$tmp/err" "addition task's tokens are bytes" "--tokenizer without a text named"
    expect 2 "tokenize without a tokenizer" -- "$strata" tokenize "$toks/test.txt"
    expect 2 "tokenize a missing file" -- "$strata" tokenize --tokenizer "$toks/llama3.json" "$tmp/nope.txt"
fi

# A host address space too small for the driver (ulimit -v): a message that
# names the limit, not a SIGSEGV inside PoCL or "no device". (Not under
# AddressSanitizer, whose shadow memory needs terabytes of address space.)
if ! ldd "$strata" | grep -q libasan; then
    expect 1 "ulimit -v 600000" -- bash -c "ulimit -v 600000 && exec \"\$0\" devices" "$strata"
    grep_in "$tmp/err" "address space is limited to 585 MiB (ulimit -v)" "a small ulimit -v named"
fi

# --lr alone: the decay ends at a tenth of it (the default --min-lr would be above it).
expect 0 "--lr alone" -- "$strata" train --layers 1 --embd 16 --heads 2 --batch 4 --eval-batches 1 \
    --steps 1 --lr 1e-4 --out "$tmp/lr"
grep_in "$tmp/out" "lr 1.0e-04 warmup 50 cosine to 1.0e-05" "--min-lr a tenth of --lr"

[ "$fails" = 0 ] && echo "all cli checks passed" || echo "$fails cli check(s) failed"
[ "$fails" = 0 ]
