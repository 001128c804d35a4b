#!/bin/bash
# terminal_test.sh - every wait says what it is, on a terminal only: under a
# pseudo-terminal (util-linux `script`) train, eval and generate show their
# progress lines (first kernel builds "cached for next time", device
# measurements, validation, evaluation, prompt reading); with stderr in a
# file or pipe, or STRATA_PROGRESS=0, not a byte of them. Also the profile
# cache: medians with their spread, `devices --profile --refresh`.
#
# usage: terminal_test.sh path/to/strata
set -u
strata=$(realpath "$1")
work=$(mktemp -d /tmp/strata-tty-XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
command -v script >/dev/null || { echo "no 'script' (util-linux): skipped"; exit 77; }

# A cache of its own, so that the first run builds; progress lines at once
# (a build here may take less than the half second a line waits for).
export STRATA_CACHE_DIR=$work/cache STRATA_TEST_PROGRESS_NOW=1
tiny=(--layers 1 --embd 32 --heads 2 --batch 8 --eval-batches 2 --steps 2 --eval-every 2)

# in_tty OUT command...: runs the command with a terminal for stdin, stdout
# and stderr; everything it printed goes to OUT.
in_tty() {
    local out=$1
    shift
    local cmd
    printf -v cmd '%q ' "$@"
    script -qec "stty cols 200; $cmd" /dev/null >"$out" 2>&1 </dev/null
}

in_tty "$work/t1" "$strata" train "${tiny[@]}" --out "$work/m" ||
    fail "train under a terminal failed: $(cat "$work/t1")"
grep -qa "building kernels (first time on this device; cached for next time)" "$work/t1" ||
    fail "no first-build progress line on a terminal: $(cat -v "$work/t1")"
grep -qaE "built [0-9]+ kernel files and the GEMM kernels for .* \(cached for next time\)" "$work/t1" ||
    fail "no lasting line after the first build: $(cat -v "$work/t1")"
grep -qa "measuring for the planner" "$work/t1" || fail "no progress while measuring: $(cat -v "$work/t1")"
grep -qa "validating at step 2" "$work/t1" || fail "no progress while validating: $(cat -v "$work/t1")"
grep -qa $'\r\033\[K' "$work/t1" || fail "progress lines are not redrawn in place"

# The second run loads what the first built: no "first time".
in_tty "$work/t2" "$strata" train "${tiny[@]}" --out "$work/m2"
grep -qa "first time" "$work/t2" && fail "the second run says it builds for the first time: $(cat -v "$work/t2")"
grep -qa "loading kernels" "$work/t2" || fail "no loading line on the second run: $(cat -v "$work/t2")"

# Not a terminal: stderr to a file, stdout to a pipe: no progress at all.
rm -rf "$work/cache"
"$strata" train "${tiny[@]}" --out "$work/m3" --log-json "$work/log.json" 2>"$work/err" |
    cat >"$work/out" || fail "train to a file failed: $(cat "$work/err")"
grep -qaE $'\r|\033' "$work/err" "$work/out" "$work/log.json" &&
    fail "escape codes or carriage returns outside a terminal: $(cat -v "$work/err")"
grep -qa "building kernels\|validating at\|measuring for" "$work/err" "$work/out" &&
    fail "progress lines outside a terminal: $(cat "$work/err")"
grep -q "^step 2/2" "$work/out" || fail "no step line: $(cat "$work/out")"
# STRATA_PROGRESS=0 silences a terminal too.
rm -rf "$work/cache"
STRATA_PROGRESS=0 in_tty "$work/t3" "$strata" train "${tiny[@]}" --out "$work/m4"
grep -qaE $'\033\\[K' "$work/t3" && fail "STRATA_PROGRESS=0 still drew progress: $(cat -v "$work/t3")"

# eval and generate.
in_tty "$work/e" "$strata" eval -m "$work/m" --batches 3
grep -qa "evaluating addition" "$work/e" || fail "no progress while evaluating: $(cat -v "$work/e")"
in_tty "$work/g" "$strata" generate -m "$work/m" -p "123+456=" -n 3
grep -qa "reading the prompt: tokens" "$work/g" || fail "no progress reading the prompt: $(cat -v "$work/g")"
"$strata" generate -m "$work/m" -p "123+456=" -n 3 2>"$work/gerr" >/dev/null
grep -qaE $'\r|\033' "$work/gerr" && fail "generate drew progress into a file: $(cat -v "$work/gerr")"

# tokenize --out: bytes done of all the files.
in_tty "$work/k" "$strata" tokenize --tokenizer "$STRATA_SOURCE_ROOT/tests/data/tokenizers/llama3.json" \
    --out "$work/k.bin" "$STRATA_SOURCE_ROOT/tests/data/tokenizers/test.txt"
grep -qa "tokenizing into $work/k.bin: bytes" "$work/k" || fail "no progress while tokenizing: $(cat -v "$work/k")"

# Profiles: measured once (5 runs, their median and spread kept), then from
# the cache when steady (a busy machine, as under a parallel test suite, may
# make it unsteady: then it is measured again, with a warning, once); --refresh
# measures again; --refresh alone is refused.
out=$("$strata" devices --profile --devices 0 2>&1) || fail "devices --profile: $out"
grep -q "measured now" <<<"$out" || fail "the first profile was not measured: $out"
# The file of `devices --profile`'s product (train's runs above left others).
devprof() {
    grep -l '"gflops_runs"' "$work/cache/profiles/"*.json | while read -r f; do
        python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["gemm_mnk"] != [1024, 2048, 512])' "$f" &&
            echo "$f"
    done | head -1
}
prof=$(devprof)
[ -n "$prof" ] || fail "no profile file with its runs under the cache"
steady=$(python3 - "$prof" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
runs = sorted(p["gflops_runs"])
assert len(runs) == 5
assert abs(p["gflops"] - runs[2]) < 1e-6 * runs[2], (p["gflops"], runs)
assert abs(p["gflops_spread"] - (runs[-1] - runs[0]) / runs[2]) < 1e-6
assert p["steady"] == (p["gflops_spread"] <= 0.2 and "busy_cores" not in p), p
print("yes" if p["steady"] else "no")
PY
) || fail "the profile file lacks its runs, median or spread: $(cat "$prof")"
out=$("$strata" devices --profile --devices 0 2>&1)
if [ "$steady" = yes ]; then
    grep -q "cache" <<<"$out" || fail "the second profile did not come from the cache: $out"
else
    grep -q "measured now" <<<"$out" || fail "an unsteady profile was not measured again: $out"
fi
out=$("$strata" devices --profile --refresh --devices 0 2>&1)
grep -q "measured now" <<<"$out" || fail "--refresh did not measure again: $out"
# An unsteady profile (the machine was busy) is not trusted: measured again.
prof=$(devprof)
python3 - "$prof" <<'PY'
import json, sys
p = json.load(open(sys.argv[1])); p["steady"] = False; p["gflops_spread"] = 0.9
json.dump(p, open(sys.argv[1], "w"))
PY
out=$("$strata" devices --profile --devices 0 2>&1)
grep -q "measured now" <<<"$out" || fail "an unsteady cached profile was trusted: $out"
# ... but one measured unsteady by two commands is kept: a machine that stays
# busy would otherwise re-measure in every command.
prof=$(devprof)
python3 - "$prof" <<'PY'
import json, sys
p = json.load(open(sys.argv[1])); p["steady"] = False; p["gflops_spread"] = 0.9
p["unsteady_measurements"] = 2
json.dump(p, open(sys.argv[1], "w"))
PY
out=$("$strata" devices --profile --devices 0 2>&1)
grep -q "cache" <<<"$out" || fail "a profile measured unsteady twice was measured again: $out"
# Measured while other processes keep every core busy (two spinning shells
# here): the profile is used with a warning naming the load, not kept, and
# the GEMM and block times measured then are not kept either; measured
# again once the machine is idle.
spin() { for _ in $(seq "$(nproc)"); do sh -c 'end=$(($(date +%s) + 60)); while [ "$(date +%s)" -lt "$end" ]; do :; done' & done; }
spin
out=$("$strata" devices --profile --refresh --devices 0 2>&1)
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null
grep -q "other processes used [0-9.]* of the host's cores while" <<<"$out" ||
    fail "a profile measured on a busy machine gave no warning: $out"
prof=$(devprof)
python3 - "$prof" <<'PY' || fail "a profile measured busy was marked steady: $(cat "$prof")"
import json, sys
p = json.load(open(sys.argv[1]))
assert p["busy_cores"] > 0.4 and not p["steady"] and p["unsteady_measurements"] == 1, p
PY
out=$("$strata" devices --profile --devices 0 2>&1)
grep -q "measured now" <<<"$out" || fail "a profile measured busy was trusted: $out"
out=$("$strata" devices --refresh 2>&1)
[ $? -eq 2 ] && grep -q "give it with --profile" <<<"$out" || fail "--refresh alone: $out"

if [ "$failures" -gt 0 ]; then
    echo "$failures failure(s)"
    exit 1
fi
echo "all terminal and profile checks passed"
