#!/bin/bash
# bench_llama_cpp.sh - Strata against llama.cpp's CPU backend on the same Llama weights (f32,
# byte tokens): prompt tokens/s at 128 and 512 tokens and generated tokens/s over 128, one
# after the other in one run, like llama-bench's pp/tg table.
#
# usage: tools/bench_llama_cpp.sh [build/strata] [threads]
#   Builds llama.cpp from the sources in the PyPI package llama-cpp-python (pip download,
#   cmake; minutes, once, kept in $LLAMA_CPP_DIR, default /tmp/strata-llama-cpp), makes a
#   Llama of 12 x 768 (4 key/value heads, MLP 2048, 1,024 positions) with one training step
#   of Strata, writes it as GGUF with tools/llama_cpp_gguf.py, and runs llama-bench -t THREADS
#   -p 128,512 -n 128 beside strata generate (greedy, --prefill 512) on the same weights.
#   Needs cmake, g++, python3-numpy (Debian's /usr/bin/python3) and pip.
set -euo pipefail
strata=$(realpath "${1:-build/strata}")
threads=${2:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)
lc=${LLAMA_CPP_DIR:-/tmp/strata-llama-cpp}
work=$(mktemp -d /tmp/strata-lcbench-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$lc"
if [ ! -x "$lc/src/build/bin/llama-bench" ]; then
    if [ ! -d "$lc/src" ]; then
        pip download --no-deps --no-binary :all: llama-cpp-python -d "$lc" >/dev/null
        tar xzf "$lc"/llama_cpp_python-*.tar.gz -C "$lc"
        mv "$lc"/llama_cpp_python-*/vendor/llama.cpp "$lc/src"
    fi
    echo "building llama.cpp's CPU backend (minutes, once)..." >&2
    cmake -S "$lc/src" -B "$lc/src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=OFF >/dev/null
    cmake --build "$lc/src/build" --target llama-bench -j"$(nproc)" >/dev/null
fi
export POCL_MAX_PTHREAD_COUNT=$threads STRATA_PROGRESS=0
head -c 400000 /dev/urandom | base64 >"$work/text.txt"
"$strata" train --arch llama --layers 12 --embd 768 --heads 12 --kv-heads 4 --inner 2048 \
    --positions 1024 --seq 64 --batch 2 --steps 1 --eval-every 0 --eval-batches 1 \
    --data "$work/text.txt" --out "$work/m" >/dev/null 2>&1
PYTHONPATH="$lc/src/gguf-py" /usr/bin/python3 "$here/llama_cpp_gguf.py" "$work/m" "$work/m.gguf"
echo "device: $("$strata" devices | sed -n 2p | tr -s " ")"
echo "llama.cpp: $lc/src, $threads threads"
echo
echo "| work | Strata tok/s | llama.cpp tok/s | Strata / llama.cpp |"
echo "|---|---|---|---|"
lcb=$("$lc/src/build/bin/llama-bench" -m "$work/m.gguf" -t "$threads" -p 128,512 -n 128 -o json 2>/dev/null)
for p in 128 512; do
    prompt=$(head -c "$p" "$work/text.txt")
    line=$("$strata" generate --model "$work/m" --prompt "$prompt" -n 128 --temperature 0 \
        --prefill 512 2>&1 >/dev/null | grep '^prompt:')
    pt=$(sed -E 's/^prompt: ([0-9]+) tokens in ([0-9.]+) s.*/\1 \2/' <<<"$line")
    gen=$(sed -E 's/.*\| ([0-9.]+) tok\/s.*/\1/' <<<"$line")
    /usr/bin/python3 - "$p" "$pt" "$gen" "$lcb" <<'PY'
import json, sys
p, (n, secs), gen, lcb = int(sys.argv[1]), sys.argv[2].split(), float(sys.argv[3]), json.loads(sys.argv[4])
ours = int(n) / float(secs)
pp = next(r["avg_ts"] for r in lcb if r["n_prompt"] == p and r["n_gen"] == 0)
print(f"| prompt {p} | {ours:,.1f} | {pp:,.1f} | {ours / pp:.3f} |")
if p == 128:
    tg = next(r["avg_ts"] for r in lcb if r["n_gen"] == 128 and r["n_prompt"] == 0)
    print(f"| generate 128 | {gen:,.1f} | {tg:,.1f} | {gen / tg:.2f} |")
PY
done
echo
echo "Strata: strata generate, greedy, --prefill 512 (its prompt time includes the first"
echo "token's step); llama.cpp: llama-bench, averages of its repetitions."
