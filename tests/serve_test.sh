#!/usr/bin/env bash
# serve_test.sh - `strata serve` end to end on a small Llama model with a
# real tokenizer and a Llama 3 chat template: the error table through curl,
# the `openai` package's client (tests/serve_check.py), greedy answers equal
# to `strata generate`'s at 1 and 4 concurrent clients (tools/serve_load.py;
# on one device, two replicas and two stages),
# a client's disconnect cancelling its sequence, 503 with Retry-After past
# the queue, 200+ malformed requests and slow clients (tests/serve_fuzz.py),
# SIGTERM finishing the request in flight, and a device failure failing its
# request with 500 and ending the server. Loopback only, bounded in time.
#
# usage: serve_test.sh STRATA   (STRATA_PYCLIENTS: where tools/setup.sh
# --tests put the openai package)
set -uo pipefail
strata=$1
root=${STRATA_SOURCE_ROOT:?}
py=/usr/bin/python3
pyclients=${STRATA_PYCLIENTS:-$root/build/pyclients}
if ! PYTHONPATH=$pyclients $py -c 'import openai' 2>/dev/null; then
    echo "serve_test: the openai package is not in $pyclients: run tools/setup.sh --tests" >&2
    exit 1
fi
tmp=$(mktemp -d /tmp/strata-serve-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; failures=$((failures + 1)); }
check() { if eval "$1"; then ok "$2"; else bad "$2"; fi; }

# The model: 2 Llama layers trained 2 steps on the test text, with the Llama 3
# test tokenizer and a Llama 3 chat template.
toks=$root/tests/data/tokenizers
"$strata" tokenize --tokenizer "$toks/llama3.json" --out "$tmp/tok.bin" "$toks/test.txt" \
    >/dev/null || exit 1
"$strata" train --arch llama --kv-heads 2 --layers 2 --embd 64 --heads 4 --data "$tmp/tok.bin" \
    --vocab 1500 --seq 32 --positions 512 --batch 4 --steps 2 --eval-every 0 \
    --out "$tmp/m" >"$tmp/train.log" 2>&1 || { cat "$tmp/train.log"; exit 1; }
cp "$toks/llama3.json" "$tmp/m/tokenizer.json"
$py - "$root/tests/data/chat/llama3.jinja" "$tmp/m/tokenizer_config.json" <<'EOF'
import json, sys
json.dump({'bos_token': '<|begin_of_text|>', 'eos_token': '<|end_of_text|>',
           'chat_template': open(sys.argv[1]).read()}, open(sys.argv[2], 'w'))
EOF

# start_server NAME ARGS...: runs it in the background, waits for "ready"
# (at most 120 s), sets $port; the log is $tmp/NAME.log.
start_server() {
    local name=$1
    shift
    "$strata" serve --model "$tmp/m" --port 0 "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
    pid=$!
    pids+=("$pid")
    port=
    for _ in $(seq 1200); do
        port=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$tmp/$name.log")
        grep -q "ready:" "$tmp/$name.log" && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/$name.log"; return 1; }
        sleep 0.1
    done
    return 1
}

# ---- server A: the API, errors, clients ------------------------------------------
key=serve-test-key
start_server a --parallel 4 --queue 8 --api-key "$key" --timeout 2 --max-tokens 450 \
    --max-body 65536 || { bad "server A starts"; exit 1; }
url=http://127.0.0.1:$port
ok "server A listens on port $port and loads"

# curl CODE NAME ARGS: the status code and an OpenAI error object
req() {
    local want=$1 name=$2
    shift 2
    local got
    got=$(curl -s -o "$tmp/body" -w '%{http_code}' --max-time 60 "$@")
    if [ "$got" != "$want" ]; then
        bad "$name: HTTP $got, not $want ($(head -c 300 "$tmp/body"))"
    elif [ "$want" -ge 400 ] && ! $py -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert e["message"] and e["type"]' "$tmp/body" 2>/dev/null; then
        bad "$name: HTTP $got without an error object: $(head -c 300 "$tmp/body")"
    else
        ok "$name: HTTP $got"
    fi
}
auth=(-H "Authorization: Bearer $key")
c=$url/v1/completions
req 200 "health" "$url/health"
req 401 "no API key" "$c" -d '{"prompt": "a"}'
req 401 "a wrong API key" "$c" -H "Authorization: Bearer $key-x" -d '{"prompt": "a"}'
req 401 "metrics need the key" "$url/metrics"
req 400 "malformed JSON" "${auth[@]}" "$c" -d '{"prompt": '
req 400 "a prompt of the wrong type" "${auth[@]}" "$c" -d '{"prompt": 5}'
req 400 "max_tokens of the wrong type" "${auth[@]}" "$c" -d '{"prompt": "a", "max_tokens": "9"}'
req 404 "an unknown model" "${auth[@]}" "$c" -d '{"prompt": "a", "model": "gpt-4"}'
req 404 "an unknown endpoint" "${auth[@]}" "$url/v1/embeddings" -d '{}'
req 405 "GET on completions" "${auth[@]}" "$c"
head -c 70000 /dev/zero | tr '\0' 'a' >"$tmp/big"
req 413 "a body past --max-body" "${auth[@]}" "$c" --data-binary "@$tmp/big"
req 422 "temperature out of range" "${auth[@]}" "$c" -d '{"prompt": "a", "temperature": 5}'
req 422 "max_tokens past --max-tokens" "${auth[@]}" "$c" -d '{"prompt": "a", "max_tokens": 451}'
req 422 "n past --parallel" "${auth[@]}" "$c" -d '{"prompt": "a", "n": 5}'
req 422 "logprobs (not supported)" "${auth[@]}" "$c" -d '{"prompt": "a", "logprobs": 3}'
long=$($py -c 'print("word " * 600)')
req 400 "a prompt longer than the context" "${auth[@]}" "$c" -d "{\"prompt\": \"$long\"}"
grep -q context_length_exceeded "$tmp/body" && ok "  its code: context_length_exceeded" ||
    bad "  its code: $(cat "$tmp/body")"
req 422 "a system message for... a role it lacks" "${auth[@]}" "$url/v1/chat/completions" \
    -d '{"messages": [{"role": "tool", "content": "x"}]}'
req 200 "models" "${auth[@]}" "$url/v1/models"
grep -q '"id":"m"' "$tmp/body" && ok "  it lists 'm'" || bad "  models: $(cat "$tmp/body")"

# the openai package: completions, chat, streams, n, stop, seeds, usage
counts=$tmp/counts.json
once=$(printf 'Once upon a time' | "$strata" tokenize --tokenizer "$toks/llama3.json" --template | wc -w)
chat=$(printf '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n' |
    "$strata" tokenize --tokenizer "$toks/llama3.json" | wc -w)
echo "{\"Once upon a time\": $once, \"chat\": $chat}" >"$counts"
if PYTHONPATH=$pyclients timeout 300 $py "$root/tests/serve_check.py" "$url" "$key" "$counts" \
    >"$tmp/check.log" 2>&1; then
    ok "the openai client's checks ($(grep -c '^ok' "$tmp/check.log") of them)"
else
    bad "the openai client's checks:"
    cat "$tmp/check.log"
fi

# greedy answers equal `strata generate`'s, at 1 and 4 clients at once
$py -c 'import json; json.dump(["Once upon a time", "The capital of France is", "12+34=", "Hello world", "In the beginning", "def main():"], open("'"$tmp/prompts.json"'", "w"))'
$py - "$strata" "$tmp/m" "$tmp/prompts.json" "$tmp/expect.json" <<'EOF' || bad "strata generate"
import json, subprocess, sys
strata, model, prompts, out = sys.argv[1:5]
expect = {}
for p in json.load(open(prompts)):
    r = subprocess.run([strata, 'generate', '--model', model, '-p', p, '-n', '12',
                        '--temperature', '0'], capture_output=True, check=True)
    text = r.stdout.decode('utf-8', 'replace')
    assert text.startswith(p), (p, text)
    expect[p] = text[len(p):]  # and a newline when the text had none at its end
json.dump(expect, open(out, 'w'))
EOF
# greedy CLIENTS LABEL: 12 requests from CLIENTS clients at once to $url give
# the texts `strata generate` gives
greedy() {
    local clients=$1 label=$2
    if PYTHONPATH=$pyclients timeout 300 $py "$root/tools/serve_load.py" --url "$url" \
        --api-key "$key" --clients "$clients" --requests 12 --max-tokens 12 \
        --prompts "$tmp/prompts.json" --json "$tmp/load$clients.json" >"$tmp/load.log" 2>&1 &&
        $py - "$tmp/load$clients.json" "$tmp/expect.json" <<'EOF'; then
import json, sys
got = json.load(open(sys.argv[1]))['texts']
want = json.load(open(sys.argv[2]))
bad = [p for p in want if not (want[p] == got[p] + '\n' or (want[p] == got[p] and got[p].endswith('\n')))]
for p in bad:
    print('  %r: served %r, generate %r' % (p, got[p], want[p]))
sys.exit(1 if bad else 0)
EOF
        ok "$label$clients client(s): 12 requests, usage checked, greedy texts equal generate's"
    else
        bad "$label$clients client(s) against generate:"
        cat "$tmp/load.log"
    fi
}
for clients in 1 4; do greedy $clients ""; done

# a client that goes away cancels its sequence (streamed, and waiting for a whole answer)
metric() { curl -s "${auth[@]}" "$url/metrics" | sed -n "s/^$1 //p"; }
before=$(metric strata_requests_cancelled_total)
curl -sN --max-time 0.1 "${auth[@]}" "$c" -d '{"prompt": "Hello", "max_tokens": 450, "stream": true, "ignore_eos": true}' >/dev/null
curl -s --max-time 0.1 "${auth[@]}" "$c" -d '{"prompt": "Hello", "max_tokens": 450, "ignore_eos": true}' >/dev/null
for _ in $(seq 50); do
    [ "$(metric strata_requests_cancelled_total)" -ge $((before + 2)) ] && [ "$(metric strata_kv_slots_used)" = 0 ] && break
    sleep 0.1
done
check '[ "$(metric strata_requests_cancelled_total)" -ge $((before + 2)) ]' \
    "two clients that left: cancelled ($(metric strata_requests_cancelled_total))"
check '[ "$(metric strata_kv_slots_used)" = 0 ]' "their slots are free again"
check 'metric strata_time_to_first_token_seconds_count | grep -q "^[1-9]"' \
    "metrics: time to first token observed"

# malformed requests, broken HTTP, slow clients (idle timeout 2 s)
if timeout 300 $py "$root/tests/serve_fuzz.py" 127.0.0.1 "$port" "$key" 2 >"$tmp/fuzz.log" 2>&1; then
    ok "$(tail -1 "$tmp/fuzz.log")"
else
    bad "malformed requests:"
    cat "$tmp/fuzz.log"
fi
check 'kill -0 ${pids[0]}' "server A is alive after them"
grep -E "AddressSanitizer|runtime error|LeakSanitizer" "$tmp/a.log" && bad "a sanitizer report in server A's log"

# SIGTERM: the request in flight finishes, then exit 0
curl -sN "${auth[@]}" "$c" -d '{"prompt": "Hello", "max_tokens": 300, "stream": true, "temperature": 0, "ignore_eos": true}' >"$tmp/inflight" &
cpid=$!
for _ in $(seq 100); do [ -s "$tmp/inflight" ] && break; sleep 0.05; done
kill -TERM "${pids[0]}"
wait "${pids[0]}"
code=$?
wait $cpid
check '[ $code = 0 ]' "SIGTERM: exit 0 ($code)"
check 'grep -q "data: \[DONE\]" "$tmp/inflight" && grep -q "\"finish_reason\":\"length\"" "$tmp/inflight"' \
    "the stream in flight finished whole (300 tokens, [DONE])"
check 'grep -q "finishing the requests in flight" "$tmp/a.log"' "the drain is said"
check '! curl -s --max-time 2 "$url/health" >/dev/null' "nothing listens after the exit"

# ---- server B: one slot, a queue of one: 503 with Retry-After past it; a stream
# waiting in the queue longer than the idle timeout (1 s) is kept open by comments
start_server b --parallel 1 --queue 1 --timeout 1 --max-tokens 450 || bad "server B starts"
url=http://127.0.0.1:$port
curl -sN "$url/v1/completions" -d '{"prompt": "Hello", "max_tokens": 450, "stream": true, "ignore_eos": true}' >"$tmp/first" &
cpid=$!
for _ in $(seq 100); do [ -s "$tmp/first" ] && break; sleep 0.02; done
curl -sN "$url/v1/completions" -d '{"prompt": "Hi", "max_tokens": 20, "stream": true}' >"$tmp/second" &
cpid2=$!
sleep 0.1
curl -s -D "$tmp/head" -o "$tmp/body" "$url/v1/completions" -d '{"prompt": "a", "max_tokens": 2}'
check 'grep -q "^HTTP/1.1 503" "$tmp/head" && grep -qi "^Retry-After: 1" "$tmp/head"' \
    "past one slot and a queue of one: 503 with Retry-After"
wait $cpid $cpid2
check 'grep -q "data: \[DONE\]" "$tmp/first" && grep -q "data: \[DONE\]" "$tmp/second"' \
    "the running and the queued streams both finish"
check 'grep -q "^:$" "$tmp/second"' "the queued stream was kept open by comment lines"
kill -INT "${pids[1]}"
wait "${pids[1]}"
check '[ $? = 0 ]' "SIGINT: exit 0"

# ---- server C: a device failure fails its request with 500, and the server ends ----
# (a prompt of 400 token ids read 8 a pass: 50 passes, past the 40th whatever is drawn)
STRATA_TEST_FAIL_STAGE=0:40 start_server c --parallel 2 --prefill 8 || bad "server C starts"
url=http://127.0.0.1:$port
ids=$(seq -s, 1 400)
curl -s -o "$tmp/body" -w '%{http_code}' --max-time 60 "$url/v1/completions" \
    -d "{\"prompt\": [$ids], \"max_tokens\": 20}" >"$tmp/code"
check '[ "$(cat "$tmp/code")" = 500 ] && grep -q "a device failed" "$tmp/body"' \
    "a device failure: HTTP 500 naming it ($(cat "$tmp/code"))"
for _ in $(seq 100); do kill -0 "${pids[2]}" 2>/dev/null || break; sleep 0.1; done
wait "${pids[2]}"
code=$?
check '[ $code = 1 ]' "the server ends with exit 1 ($code)"
check 'grep -q "a device failed: .*injected failure" "$tmp/c.log"' "its log says why"

# ---- servers D and E: two PoCL basic devices, as two replicas of the model
# (each replica steps its own sequences on a thread of its own) and as a
# pipeline of two stages: the same greedy texts. The planner weighs both
# layouts (its table); which it picks follows the devices' measured rates,
# and a test running beside this one can make one device measure slower and
# tip it to a pipeline (seen once in a cold CI run), so D names its layout.
POCL_DEVICES="basic basic" start_server d --parallel 4 --devices all --layout data ||
    bad "server D starts"
url=http://127.0.0.1:$port
check 'grep -q "plan: 2 replicas (2 sequences each) of 1 stage" "$tmp/d.log"' \
    "--layout data: two replicas"
greedy 4 "two replicas: "
kill -TERM "${pids[3]}"
wait "${pids[3]}"
check '[ $? = 0 ]' "server D: exit 0"
POCL_DEVICES="basic basic" start_server e --parallel 4 --devices all --layout pipeline ||
    bad "server E starts"
url=http://127.0.0.1:$port
check 'grep -q "plan: 2 stages" "$tmp/e.log"' "--layout pipeline: two stages"
greedy 4 "two stages: "
kill -TERM "${pids[4]}"
wait "${pids[4]}"
check '[ $? = 0 ]' "server E: exit 0"

# ---- bad flags ------------------------------------------------------------------
"$strata" serve --model "$tmp/m" --port 70000 2>"$tmp/err"
check '[ $? = 2 ] && grep -q "port" "$tmp/err"' "--port 70000: exit 2"
"$strata" serve 2>"$tmp/err"
check '[ $? = 2 ] && grep -q "model DIR is required" "$tmp/err"' "no --model: exit 2"
"$strata" serve --model "$tmp/none" --port 0 2>"$tmp/err"
check '[ $? = 2 ] && grep -q "none" "$tmp/err"' "a missing model folder: exit 2, named"
"$strata" serve --model "$tmp/m" --host 256.1.1.1 --port 0 2>"$tmp/err"
check '[ $? = 2 ] && grep -q "host" "$tmp/err"' "a bad --host: exit 2"
"$strata" serve --model "$tmp/m" --layout sideways --port 0 2>"$tmp/err"
check '[ $? = 2 ] && grep -q "sideways" "$tmp/err"' "a bad --layout: exit 2, named"

echo "serve_test: $failures failure(s)"
[ $failures = 0 ]
