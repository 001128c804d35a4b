#!/bin/bash
# bench_serve.sh - `strata serve` under load, against llama.cpp's llama-server on the same
# weights and the same load script (tools/serve_load.py, the openai package), in one run,
# one server at a time, on loopback.
#
# usage: tools/bench_serve.sh [build/strata] [MODEL_DIR MODEL.gguf]
#   Without a model: a Llama of 12 x 768 (4 key/value heads, MLP 2048, 512 positions, byte
#   tokens) after one training step, and its GGUF (tools/llama_cpp_gguf.py), as
#   tools/bench_llama_cpp.sh makes them; llama.cpp is built there (LLAMA_CPP_DIR, default
#   /tmp/strata-llama-cpp), with its server. Greedy, 32 tokens per request.
#   Rows: 1 client x 8 requests; 16 clients x 64 requests; 16 clients x 32 requests of
#   480-byte prompts (time to first token under load). Servers:
#     strata, one PoCL pthread device (both cores), --parallel 16
#     strata, one PoCL basic device (one core), and two basic devices as the planner lays
#     them out (two replicas of the model, each stepping its own sequences), and as a
#     pipeline of two stages (--layout pipeline)
#     llama-server -t THREADS -np 16 -c 8192 (16 slots of 512 positions)
#   DTYPE=bf16 (or fp16): the strata servers hold the weights and KV caches in that type
#   (--dtype; llama-server keeps the GGUF's f32).
#   Needs the openai package (tools/setup.sh --tests puts it in build/pyclients).
set -euo pipefail
strata=$(realpath "${1:-build/strata}")
here=$(cd "$(dirname "$0")" && pwd)
threads=${THREADS:-$(nproc)}
lc=${LLAMA_CPP_DIR:-/tmp/strata-llama-cpp}
export PYTHONPATH=${STRATA_PYCLIENTS:-$here/../build/pyclients} STRATA_PROGRESS=0
work=$(mktemp -d /tmp/strata-servebench-XXXXXX)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$work"' EXIT
if [ ! -x "$lc/src/build/bin/llama-server" ]; then
    [ -d "$lc/src" ] || { echo "bench_serve: run tools/bench_llama_cpp.sh once first (it fetches llama.cpp)" >&2; exit 1; }
    echo "building llama-server (minutes, once)..." >&2
    cmake -S "$lc/src" -B "$lc/src/build" -DLLAMA_BUILD_SERVER=ON >/dev/null
    cmake --build "$lc/src/build" --target llama-server -j"$(nproc)" >/dev/null
fi
if [ $# -ge 3 ]; then
    model=$2 gguf=$3
else
    model=$work/m gguf=$work/m.gguf
    head -c 400000 /dev/urandom | base64 >"$work/text.txt"
    "$strata" train --arch llama --layers 12 --embd 768 --heads 12 --kv-heads 4 --inner 2048 \
        --positions 512 --seq 64 --batch 2 --steps 1 --eval-every 0 --eval-batches 1 \
        --data "$work/text.txt" --out "$model" >/dev/null 2>&1
    PYTHONPATH="$lc/src/gguf-py" /usr/bin/python3 "$here/llama_cpp_gguf.py" "$model" "$gguf"
fi

# wait_ready URL LOG: until /health says ok (at most 10 minutes)
wait_ready() {
    for _ in $(seq 3000); do
        curl -sf "$1/health" >/dev/null 2>&1 && return 0
        kill -0 "$server" 2>/dev/null || { cat "$2" >&2; return 1; }
        sleep 0.2
    done
    return 1
}
# load NAME URL: the three rows, as JSON files $work/NAME-*.json
load() {
    local name=$1 url=$2
    /usr/bin/python3 "$here/serve_load.py" --url "$url" --clients 1 --requests 8 \
        --max-tokens 32 --label "$name 1 client" --json "$work/$name-1.json"
    /usr/bin/python3 "$here/serve_load.py" --url "$url" --clients 16 --requests 64 \
        --max-tokens 32 --label "$name 16 clients" --json "$work/$name-16.json"
    if [ "${3:-}" != short ]; then
        /usr/bin/python3 "$here/serve_load.py" --url "$url" --clients 16 --requests 32 \
            --max-tokens 32 --prompt-tokens 480 --bytes --label "$name 480-byte prompts" \
            --json "$work/$name-long.json"
    fi
}
strata_serve() { # NAME POCL_DEVICES all|short [flags]
    local name=$1 devs=$2 rows=$3
    shift 3
    POCL_DEVICES=$devs "$strata" serve --model "$model" --port 18473 --parallel 16 \
        ${DTYPE:+--dtype "$DTYPE"} "$@" \
        2>"$work/$name.log" &
    server=$!
    wait_ready http://127.0.0.1:18473 "$work/$name.log"
    load "$name" http://127.0.0.1:18473 "$rows"
    kill -TERM $server
    wait $server
    server=
}
echo "device: $("$strata" devices | sed -n 2p | tr -s " ")"
strata_serve strata pthread all
strata_serve basic1 basic short
strata_serve basic2 "basic basic" short --devices all
grep -h "plan:" "$work/basic2.log" | head -1 || true
strata_serve basic2p "basic basic" short --devices all --layout pipeline
"$lc/src/build/bin/llama-server" -m "$gguf" -t "$threads" -np 16 -c 8192 --host 127.0.0.1 \
    --port 18474 --no-webui >"$work/llama.log" 2>&1 &
server=$!
wait_ready http://127.0.0.1:18474 "$work/llama.log"
# (its slots of 512 positions stop 480-byte prompts at 29 tokens: those checks fail, as said)
load llama http://127.0.0.1:18474 || true
kill $server
wait $server || true
server=
/usr/bin/python3 - "$work" <<'PY'
import json, os, sys
w = sys.argv[1]
def s(name):
    p = os.path.join(w, name + '.json')
    return json.load(open(p))['summary'] if os.path.exists(p) else None
print()
print('| load | strata tok/s | llama-server tok/s | strata / llama-server | strata first token p50 / p90 s | llama-server first token p50 / p90 s |')
print('|---|---|---|---|---|---|')
for row, label in (('1', '1 client, 8 requests'), ('16', '16 clients, 64 requests'), ('long', '16 clients, 32 requests of 480-byte prompts')):
    a, b = s('strata-' + row), s('llama-' + row)
    if a and b:
        print('| %s | %.1f | %.1f | %.2f | %.3f / %.3f | %.3f / %.3f |' % (label, a['tok_per_s'], b['tok_per_s'], a['tok_per_s'] / b['tok_per_s'], a['ttft_p50_s'], a['ttft_p90_s'], b['ttft_p50_s'], b['ttft_p90_s']))
one, sixteen = s('strata-1'), s('strata-16')
print()
print('strata, one device: 16 clients give %.2fx the tokens per second of one client' % (sixteen['tok_per_s'] / one['tok_per_s']))
b1, b2, b2p = s('basic1-16'), s('basic2-16'), s('basic2p-16')
print('strata, 16 clients: two basic devices %.1f tok/s (two replicas), %.1f tok/s (two stages), one basic device %.1f tok/s: %.2fx and %.2fx' % (b2['tok_per_s'], b2p['tok_per_s'], b1['tok_per_s'], b2['tok_per_s'] / b1['tok_per_s'], b2p['tok_per_s'] / b1['tok_per_s']))
PY
