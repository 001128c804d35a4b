#!/bin/bash
# pipe_cli_test.sh - splitting through the command line, on two PoCL devices:
# plan (table, JSON, memory errors), training split over both devices with
# the losses of one device, a model that only fits split (--mem-limit),
# generation split and not, and a split checkpoint resumed on one device.
#
# usage: pipe_cli_test.sh path/to/strata   (run with POCL_DEVICES set to two devices)
set -u
strata=$1
work=$(mktemp -d /tmp/strata-pipe-XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
n=$("$strata" devices --json | grep -c '"index"')
if [ "$n" -lt 2 ]; then
    echo "skip: needs two OpenCL devices, found $n" >&2
    exit 77
fi
tiny=(--layers 2 --embd 32 --heads 2 --batch 8 --eval-batches 2 --warmup 5 --micro-batches 4)

out=$("$strata" plan --devices 0,1 --split uniform 2>&1) || fail "plan: $out"
grep -q "plan: 2 stages" <<<"$out" || fail "plan did not split over two devices: $out"
grep -q "embedding, h.0" <<<"$out" || fail "plan table lacks the first stage's layers: $out"
grep -qE "predicted step [0-9.]+ ms \| bubble [0-9.]+% \| speedup" <<<"$out" || fail "no prediction line: $out"
"$strata" plan --devices 0,1 --json | grep -q '"stages"' || fail "plan --json lacks stages"
out=$("$strata" plan --mem-limit 0:1M,1:1M 2>&1)
[ $? = 2 ] || fail "a model that fits nowhere did not exit 2"
grep -q "does not fit" <<<"$out" || fail "no 'does not fit' message: $out"
out=$("$strata" plan --devices 0,1 --split layers:0-0,1-2 2>&1)
[ $? = 2 ] && grep -q "last block is 1" <<<"$out" || fail "a bad layer range was not refused: $out"
out=$("$strata" train --mem-limit 0:bad 2>&1)
[ $? = 2 ] && grep -q "bad --mem-limit" <<<"$out" || fail "a bad --mem-limit was not refused: $out"

# Split training gives the one-device losses (to 1e-5 relative).
"$strata" train "${tiny[@]}" --steps 12 --devices 0 --log-json "$work/one.json" >/dev/null 2>&1 ||
    fail "one-device training failed"
out=$("$strata" train "${tiny[@]}" --steps 12 --devices 0,1 --split uniform --out "$work/split" \
    --stop-at 6 --log-json "$work/two.json" 2>&1) || fail "split training failed: $out"
grep -q "plan: 2 stages" <<<"$out" || fail "training did not split: $out"
grep -q "stage 1: device 1" <<<"$out" || fail "no per-device peak memory: $out"
"$strata" train --resume "$work/split" --devices 0 --log-json "$work/resumed.json" >/dev/null 2>&1 ||
    fail "resuming a split checkpoint on one device failed"
losses() { grep '"event":"step"' "$1" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
awk 'NR == FNR { a[FNR] = $1; next }
     { d = a[FNR] - $1; if (d < 0) d = -d; if (d > 1e-5 * a[FNR]) { print "step " FNR ": " a[FNR] " vs " $1; bad = 1 } }
     END { exit bad }' <(losses "$work/one.json") <(losses "$work/two.json"; losses "$work/resumed.json") ||
    fail "split or resumed losses differ from one device's"
[ "$(losses "$work/two.json" | wc -l)" = 6 ] && [ "$(losses "$work/resumed.json" | wc -l)" = 6 ] ||
    fail "expected 6 + 6 steps"

# A model that fits only when split (its weights, gradients and moments need
# 16 MiB; 10 MiB per device): auto uses both devices as one pipeline, since a
# replica would hold the whole model. Planned with nothing measured before
# (an empty cache folder): the device measurement, whose copy probe alone is
# 16 MiB, is not charged against the limit.
big=(--layers 4 --embd 128 --heads 4 --batch 8)
mkdir "$work/cold"
out=$(STRATA_CACHE_DIR="$work/cold" "$strata" plan "${big[@]}" --mem-limit 0:10M,1:10M 2>&1) ||
    fail "plan under a memory limit: $out"
grep -q "profiled device 0" <<<"$out" || fail "the cold plan did not measure the devices: $out"
out=$(STRATA_CACHE_DIR="$work/cold" "$strata" plan "${big[@]}" --mem-limit 0:10M,1:10M 2>&1) ||
    fail "plan under a memory limit (measured): $out"
grep -q "plan: 2 stages" <<<"$out" || fail "a model too big for one device was not split: $out"
grep -q "dp:2,pp:1 .*does not fit" <<<"$out" || fail "replicas that do not fit are not said so: $out"
out=$("$strata" train "${big[@]}" --mem-limit 0:10M,1:10M --steps 3 --eval-batches 1 2>&1) ||
    fail "train under a memory limit: $out"
grep -q "plan: 2 stages" <<<"$out" || fail "training under a memory limit did not split: $out"

# Replicas: dp:2 trains like one device (1e-5 relative per step), its
# checkpoint resumes on one device; the plan shows the layouts it weighed.
out=$("$strata" plan --devices 0,1 --parallel dp:2,pp:1 2>&1) || fail "plan dp:2: $out"
grep -q "plan: 2 replicas (32 sequences each) of 1 stage" <<<"$out" || fail "plan dp:2 has no replicas: $out"
out=$("$strata" plan --devices 0,1 2>&1) || fail "plan auto: $out"
grep -q "^dp:1,pp:2 " <<<"$out" && grep -q "^dp:2,pp:1 " <<<"$out" && grep -q "<- chosen" <<<"$out" ||
    fail "plan does not list the layouts it weighed: $out"
out=$("$strata" train "${tiny[@]}" --steps 12 --devices 0,1 --parallel dp:2,pp:1 --micro-batches 2 \
    --out "$work/dp" --stop-at 6 --log-json "$work/dp.json" 2>&1) || fail "dp:2 training failed: $out"
grep -q "plan: 2 replicas (4 sequences each) of 1 stage" <<<"$out" || fail "training did not replicate: $out"
"$strata" train --resume "$work/dp" --devices 0 --log-json "$work/dpr.json" >/dev/null 2>&1 ||
    fail "resuming a dp:2 checkpoint on one device failed"
awk 'NR == FNR { a[FNR] = $1; next }
     { d = a[FNR] - $1; if (d < 0) d = -d; if (d > 1e-5 * a[FNR]) { print "step " FNR ": " a[FNR] " vs " $1; bad = 1 } }
     END { exit bad }' <(losses "$work/one.json") <(losses "$work/dp.json"; losses "$work/dpr.json") ||
    fail "dp:2 or its resumed losses differ from one device's"
# The AdamW moments split over the two replicas (--shard-optimizer): 12
# steps with the losses, weights and moments of the unsplit run, bitwise,
# saved whole (the moments file the same bytes) and resumed bitwise; the
# planner and the devices hold less, by half the moments.
for z in off on; do
    flag=()
    [ $z = on ] && flag=(--shard-optimizer)
    out=$("$strata" train "${tiny[@]}" --steps 12 --devices 0,1 --parallel dp:2,pp:1 --micro-batches 2 \
        "${flag[@]}" --out "$work/z$z" --log-json "$work/z$z.json" 2>&1) || fail "dp:2 --shard-optimizer $z: $out"
    grep -o '| [0-9.]* [KM]iB on the device' <<<"$out" | tr -d '|' >"$work/z$z.mem"
done
grep -q "AdamW moments split over the replicas" <<<"$out" || fail "the plan does not say the moments are split: $out"
cmp -s <(grep '"event":"step"' "$work/zoff.json" | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/zon.json" | sed 's/"ms".*//') ||
    fail "--shard-optimizer changed the losses"
for k in model optimizer; do
    cmp -s "$(ls "$work/zoff"/$k-step* | tail -1)" "$(ls "$work/zon"/$k-step* | tail -1)" ||
        fail "--shard-optimizer saved other $k bytes"
done
awk -v a="$(cut -d' ' -f2 "$work/zoff.mem")" -v b="$(cut -d' ' -f2 "$work/zon.mem")" 'BEGIN { exit !(b < a) }' ||
    fail "--shard-optimizer holds no less: $(cat "$work/zoff.mem") vs $(cat "$work/zon.mem")"
"$strata" train "${tiny[@]}" --steps 12 --devices 0,1 --parallel dp:2,pp:1 --micro-batches 2 --shard-optimizer \
    --stop-at 6 --out "$work/zstop" >/dev/null 2>&1 || fail "--shard-optimizer --stop-at 6 failed"
"$strata" train --resume "$work/zstop" --devices 0,1 --parallel dp:2,pp:1 --shard-optimizer --log-json "$work/zres.json" >/dev/null 2>&1 ||
    fail "resuming a run with split moments failed"
cmp -s <(grep '"event":"step"' "$work/zon.json" | sed -n '7,12p' | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/zres.json" | sed 's/"ms".*//') ||
    fail "--shard-optimizer: resumed steps 7..12 differ"
# Packed JSON Lines (several examples a row, each attending only itself):
# the positions reach every stage and each replica's share; split over two
# stages and as dp:2 the losses are one device's (1e-5 relative). GPT-2,
# whose kernels this test has built already (test_layers and test_llama
# cover the grouped heads and rope).
for i in $(seq 1 40); do
    printf '{"prompt": "%d+%d=", "completion": "%d"}\n' $((i % 10)) $((i % 7)) $((i % 10 + i % 7))
    printf '{"text": "%d and %d make %d"}\n' $((i % 9)) $((i % 5)) $((i % 9 + i % 5))
done >"$work/sums.jsonl"
packed=(--layers 2 --embd 32 --heads 2 --data "$work/sums.jsonl" --seq 32 --batch 4
    --micro-batches 2 --steps 6 --eval-batches 1 --warmup 2)
"$strata" train "${packed[@]}" --devices 0 --log-json "$work/p1.json" >/dev/null 2>&1 ||
    fail "packed JSON Lines on one device failed"
for how in "--split uniform" "--parallel dp:2,pp:1"; do
    out=$("$strata" train "${packed[@]}" --devices 0,1 $how --log-json "$work/p2.json" 2>&1) ||
        fail "packed JSON Lines with $how failed: $out"
    grep -q "^rows: packed" <<<"$out" || fail "packed rows are not said: $out"
    awk 'NR == FNR { a[FNR] = $1; next }
         { d = a[FNR] - $1; if (d < 0) d = -d; if (d > 1e-5 * a[FNR]) { print "step " FNR ": " a[FNR] " vs " $1; bad = 1 } }
         END { exit bad || FNR != 6 }' <(losses "$work/p1.json") <(losses "$work/p2.json") ||
        fail "packed JSON Lines with $how: the losses differ from one device's"
done
out=$("$strata" train --parallel dp:2,pp:2 --devices 0,1 --steps 1 2>&1)
[ $? = 2 ] && grep -q "needs 4 devices" <<<"$out" || fail "dp:2,pp:2 on two devices was not refused: $out"
# PoCL's basic devices hold replicas in one process, each with programs of
# its own (PoCL 3.1 loses count of loaded kernels when two run one binary at
# once); the steps are the same.
out=$(POCL_DEVICES="basic basic" "$strata" train "${tiny[@]}" --steps 12 --parallel dp:2,pp:1 \
    --micro-batches 2 --out "$work/dpb" --log-json "$work/dpb.json" 2>&1) ||
    fail "dp:2 on PoCL's basic devices failed: $out"
awk 'NR == FNR { a[FNR] = $1; next }
     { d = a[FNR] - $1; if (d < 0) d = -d; if (d > 1e-5 * a[FNR]) { print "step " FNR ": " a[FNR] " vs " $1; bad = 1 } }
     END { exit bad }' <(losses "$work/one.json") <(losses "$work/dpb.json") ||
    fail "dp:2 on basic devices differs from one device"
a=$("$strata" generate --model "$work/dpb" --prompt "12" --prompt "345" -n 6 --seed 4 --devices 0 2>/dev/null)
b=$(POCL_DEVICES="basic basic" "$strata" generate --model "$work/dpb" --prompt "12" --prompt "345" \
    -n 6 --seed 4 --parallel data 2>/dev/null)
[ -n "$a" ] && [ "$a" = "$b" ] || fail "generation over replicas on basic devices differs: '$a' vs '$b'"
out=$("$strata" train --parallel dp:0 --steps 1 2>&1)
[ $? = 2 ] && grep -q "bad --parallel 'dp:0'" <<<"$out" || fail "a bad --parallel was not refused: $out"
out=$("$strata" train --parallel data --devices 0,1 --batch 7 --steps 1 2>&1)
[ $? = 2 ] && grep -q "does not split into 2 replicas" <<<"$out" ||
    fail "a batch that does not split over replicas was not refused: $out"

# Generation: the same text split or not.
"$strata" train "${tiny[@]}" --steps 10 --devices 0 --out "$work/m" >/dev/null 2>&1
a=$("$strata" generate --model "$work/m" --prompt "12" -n 8 --seed 4 --devices 0 2>/dev/null)
b=$("$strata" generate --model "$work/m" --prompt "12" -n 8 --seed 4 --devices 0,1 --split uniform 2>/dev/null)
[ "$a" = "$b" ] || fail "split generation differs: '$a' vs '$b'"
a=$("$strata" generate --model "$work/m" --prompt "12" --prompt "345" --prompt "6" -n 6 --seed 4 \
    --devices 0 2>/dev/null)
b=$("$strata" generate --model "$work/m" --prompt "12" --prompt "345" --prompt "6" -n 6 --seed 4 \
    --devices 0,1 --split uniform 2>/dev/null)
[ "$a" = "$b" ] || fail "split generation of three prompts differs: '$a' vs '$b'"
[ "$(wc -l <<<"$a")" -ge 3 ] || fail "three prompts should give three texts: '$a'"
# Prompts read in passes of several tokens (prefill, the default) or token by
# token: the same text, over two stages (a pass's rows cross the link) and
# with prompts of different lengths (one has nothing left in the later passes).
c=$("$strata" generate --model "$work/m" --prompt "12" --prompt "345" --prompt "6" -n 6 --seed 4 \
    --devices 0,1 --split uniform --prefill 2 2>/dev/null)
d=$("$strata" generate --model "$work/m" --prompt "12" --prompt "345" --prompt "6" -n 6 --seed 4 \
    --devices 0,1 --split uniform --prefill 1 2>/dev/null)
[ "$c" = "$b" ] && [ "$d" = "$b" ] || fail "prefill changed split generation: '$c', '$d' vs '$b'"
out=$("$strata" eval --model "$work/m" --devices 0,1 --split uniform --micro-batches 2 2>&1) ||
    fail "split eval failed: $out"

# A stage that fails mid-step stops the other stage's thread: an error, not a hang.
out=$(STRATA_TEST_FAIL_STAGE=1:9 timeout 120 "$strata" train "${tiny[@]}" --steps 100 --devices 0,1 \
    --parallel pipeline 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "an injected stage failure: exit $rc, expected 1 (124: hung)"
grep -q "stage 1 on .*injected failure" <<<"$out" || fail "no message naming the failed stage: $out"
# The same in a replica: the other replica finishes its pass, the step fails.
out=$(STRATA_TEST_FAIL_STAGE=0:9 timeout 120 "$strata" train "${tiny[@]}" --steps 100 --devices 0,1 \
    --parallel dp:2,pp:1 --micro-batches 1 2>&1)
rc=$?
[ "$rc" = 1 ] || fail "an injected failure in a replica: exit $rc, expected 1 (124: hung)"
grep -q "replica 0: stage 0 on .*injected failure" <<<"$out" || fail "no message naming the replica: $out"
# Generation spreads its prompts over replicas: the same texts.
a=$("$strata" generate --model "$work/m" --prompt "12" --prompt "345" --prompt "6" -n 6 --seed 4 \
    --devices 0 2>/dev/null)
b=$("$strata" generate --model "$work/m" --prompt "12" --prompt "345" --prompt "6" -n 6 --seed 4 \
    --devices 0,1 --parallel dp:2,pp:1 2>/dev/null)
[ "$a" = "$b" ] || fail "generation over replicas differs: '$a' vs '$b'"
out=$("$strata" eval --model "$work/m" --devices 0,1 --parallel dp:2,pp:1 2>&1) || fail "eval over replicas failed: $out"

# bench: spread, and the results as CSV and JSON for scripts.
out=$("$strata" bench --pipeline --layers 2 --embd 32 --heads 2 --batch 8 --seq 16 \
    --micro-batches 4 --steps 2 --format json 2>/dev/null) || fail "bench --format json failed"
python3 -c '
import json, sys
rows = json.loads(sys.argv[1])
assert [r["devices"] for r in rows] == [1, 2], rows
for r in rows:
    assert r["train_ms"] > 0 and r["train_spread"] >= 0 and r["forward_spread"] >= 0, r
    assert abs(r["speedup"] - rows[0]["train_ms"] / r["train_ms"]) < 1e-3, r
' "$out" || fail "bench JSON is not the expected rows: $out"
out=$("$strata" bench --pipeline --layers 2 --embd 32 --heads 2 --batch 8 --seq 16 \
    --micro-batches 4 --steps 2 --format csv 2>/dev/null) || fail "bench --format csv failed"
[ "$(head -1 <<<"$out" | cut -d, -f1-3)" = "devices,train_ms,train_spread" ] &&
    [ "$(wc -l <<<"$out")" = 3 ] || fail "bench CSV: $out"
out=$("$strata" bench --pipeline --layers 2 --embd 32 --heads 2 --batch 8 --seq 16 \
    --micro-batches 4 --steps 2 2>/dev/null) || fail "bench failed"
grep -q "spread" <<<"$out" || fail "bench table without the spread: $out"
out=$("$strata" bench --pipeline --layers 2 --embd 32 --heads 2 --batch 8 --seq 16 \
    --micro-batches 4 --steps 2 --profile 2>&1) || fail "bench --profile failed: $out"
[ "$(grep -c '^profile of device' <<<"$out")" = 3 ] || fail "bench --profile: not a table per device per run: $out"
grep -q "^launches per block per micro-batch: [0-9]" <<<"$out" || fail "bench --profile: no launch count: $out"
out=$("$strata" bench --pipeline --format xml 2>&1)
[ $? = 2 ] && grep -q "table, csv or json" <<<"$out" || fail "bench --format xml: $out"

# bench --inference: rows for 1 and 2 devices (two stages), prompt and
# generation rates for each count of sequences, as a table, CSV and JSON;
# bad requests refused before any work.
out=$("$strata" bench --inference --layers 2 --embd 32 --heads 2 --prompt 12 --gen 4 \
    --sequences 1,3 --runs 1 --format json 2>"$work/inf.err") ||
    fail "bench --inference --format json: $(tail -3 "$work/inf.err")"
python3 -c '
import json, sys
rows = json.loads(sys.argv[1])
assert [r["devices"] for r in rows] == [1, 2], rows
assert rows[1]["stages"] == 2, rows
for r in rows:
    assert r["prompt_tok_per_s"] > 0 and r["ttft_ms"] > 0, r
    assert [g["sequences"] for g in r["generate"]] == [1, 3], r
    assert all(g["tok_per_s"] > 0 for g in r["generate"]), r
' "$out" || fail "bench --inference JSON is not the expected rows: $out"
out=$("$strata" bench --inference --layers 2 --embd 32 --heads 2 --prompt 12 --gen 4 \
    --sequences 1,3 --runs 1 --format csv 2>/dev/null) || fail "bench --inference --format csv"
head -1 <<<"$out" | grep -q "^devices,layout,pp12_tok_per_s,ttft_ms,tg4_x1_tok_per_s,tg4_x3_tok_per_s" &&
    [ "$(wc -l <<<"$out")" = 3 ] || fail "bench --inference CSV: $out"
out=$("$strata" bench --inference --layers 2 --embd 32 --heads 2 --prompt 12 --gen 4 \
    --sequences 1,3 --runs 1 2>/dev/null) || fail "bench --inference"
grep -q "first token ms" <<<"$out" && grep -qE "^2 +1 x 2 stages" <<<"$out" ||
    fail "bench --inference table: $out"
for bad in "--sequences 8,2" "--sequences 0" "--prompt 100 --seq 64" "--model $work/none" \
           "--out $work/x" "--parallel dp:0"; do
    out=$("$strata" bench --inference --layers 2 --embd 32 --heads 2 $bad 2>&1)
    [ $? = 2 ] || fail "bench --inference $bad: not refused with exit 2: $out"
done

# bench --scaling: both workloads on 1 and 2 devices, the layout the planner
# chose, a table, and with --out the same table, JSON and an SVG chart.
mkdir -p "$work/scaling"
out=$("$strata" bench --scaling --layers 2 --embd 32 --heads 2 --batch 8 --seq 16 --steps 1 \
    --out "$work/scaling" 2>"$work/scaling.err") || fail "bench --scaling: $(tail -3 "$work/scaling.err")"
grep -q "^| fits one device | 2 | dp:" <<<"$out" || fail "bench --scaling: no 2-device row: $out"
grep -q "^| needs splitting | 1 | does not fit" <<<"$out" || fail "bench --scaling: one device should not hold the split workload: $out"
grep -q "^| needs splitting | 2 | dp:1,pp:2" <<<"$out" || fail "bench --scaling: the split workload is not a pipeline: $out"
cmp -s <(echo "$out") "$work/scaling/scaling.md" || fail "bench --scaling: scaling.md is not the table printed"
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
rows = d["rows"]
assert len(rows) == 4, rows
assert rows[0]["efficiency"] == 1.0 and rows[0]["devices"] == 1, rows[0]
assert [r["fits"] for r in rows] == [True, True, False, True], rows
assert all(r["train_tok_per_s"] > 0 for r in rows if r["fits"]), rows
' "$work/scaling/scaling.json" || fail "bench --scaling: scaling.json"
[ "$(grep -c "<polyline" "$work/scaling/scaling.svg")" = 6 ] || fail "bench --scaling: the chart lacks its lines"
out=$("$strata" bench --scaling --out "$work/scaling/scaling.md" 2>&1)
[ $? = 2 ] && grep -q "is not a folder" <<<"$out" || fail "bench --scaling --out to a file: $out"
# A missing --out folder is made, as train's is.
"$strata" bench --scaling --layers 1 --embd 16 --heads 2 --batch 4 --seq 8 --steps 1 \
    --out "$work/new/scal" >/dev/null 2>&1 && [ -s "$work/new/scal/scaling.svg" ] ||
    fail "bench --scaling --out to a missing folder did not make it"

# Without --micro-batches the planner chooses (on one device as its timed
# blocks say), more on a split.
out=$("$strata" plan --layers 4 --embd 64 --heads 2 --batch 16 --seq 64 --devices 0 2>&1)
grep -qE "plan: 1 stage, 1f1b, [0-9]+ micro-batch(es)? of [0-9]+ x 64 tokens \(micro-batches chosen by the planner\)" \
    <<<"$out" || fail "one device, chosen micro-batches: $out"
out=$("$strata" plan --layers 4 --embd 64 --heads 2 --batch 16 --seq 64 --devices 0,1 \
    --parallel pipeline 2>&1)
m=$(sed -n 's/^plan: 2 stages, 1f1b, \([0-9]*\) micro-batches of .*chosen by the planner.*/\1/p' <<<"$out")
[ -n "$m" ] && [ "$m" -gt 1 ] || fail "a split should get several chosen micro-batches: $out"
out=$("$strata" plan --layers 4 --embd 64 --heads 2 --batch 16 --seq 64 --devices 0,1 \
    --micro-batches 2 --parallel pipeline 2>&1)
grep -q "plan: 2 stages, 1f1b, 2 micro-batches of 8 x 64 tokens$" <<<"$out" ||
    fail "--micro-batches given is not obeyed: $out"
head -c 30000 /dev/urandom | base64 >"$work/text.txt"
out=$("$strata" train --layers 2 --embd 32 --heads 2 --batch 32 --seq 16 --data "$work/text.txt" \
    --eval-batches 1 --steps 2 --devices 0,1 --parallel pipeline --out "$work/auto" 2>&1) || fail "train with chosen micro-batches: $out"
grep -q "micro-batches chosen by the planner" <<<"$out" || fail "train does not say it chose: $out"
m=$(sed -n 's/^plan: 2 stages, 1f1b, \([0-9]*\) micro-batch.*/\1/p' <<<"$out")
grep -q "\"micro_batches\": $m," "$work/auto/"checkpoint-*.json ||
    fail "the chosen micro-batch count ($m) is not in the checkpoint's settings"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all pipeline command-line checks passed"
