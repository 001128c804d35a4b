#!/bin/bash
# bench_llama_cpp.sh - Strata against llama.cpp's CPU backend on the same Llama weights (f32,
# byte tokens): prompt tokens/s at 128 and 512 tokens and generated tokens/s over 128, one
# after the other in one run, like llama-bench's pp/tg table; and greedy tokens compared.
#
# usage: tools/bench_llama_cpp.sh [build/strata] [threads]
#   Builds llama.cpp from the sources in the PyPI package llama-cpp-python (pip download,
#   cmake; minutes, once, kept in $LLAMA_CPP_DIR, default /tmp/strata-llama-cpp) and
#   tools/llama_cpp_greedy.c against its library. Speed: a Llama of 12 x 768 (4 key/value
#   heads, MLP 2048, 1,024 positions) with one training step of Strata, written as GGUF by
#   tools/llama_cpp_gguf.py; llama-bench -t THREADS -p 128,512 -n 128 beside strata bench
#   --inference (prompt 128 and 512, 128 generated, 1 and 8 sequences). Tokens: a Llama of
#   4 x 128 trained 300 steps on a fixed text, Debian's GPL-3 (so that its next tokens are
#   not near ties, and do not move with the project's docs), greedy, 60 tokens after each of
#   four prompts, from both.
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
    cmake --build "$lc/src/build" --target llama-bench llama -j"$(nproc)" >/dev/null
fi
if [ ! -x "$lc/llama_cpp_greedy" ]; then
    cc -O2 -o "$lc/llama_cpp_greedy" "$here/llama_cpp_greedy.c" -I"$lc/src/include" \
        -I"$lc/src/ggml/include" -L"$lc/src/build/bin" -lllama -Wl,-rpath,"$lc/src/build/bin"
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
    "$strata" bench --inference --model "$work/m" --prompt "$p" --gen 128 --prefill 256 \
        --sequences 1,8 --runs 2 --format json 2>/dev/null >"$work/b$p.json"
done
/usr/bin/python3 - "$work/b128.json" "$work/b512.json" "$lcb" <<'PY'
import json, sys
b128, b512, lcb = json.load(open(sys.argv[1]))[0], json.load(open(sys.argv[2]))[0], json.loads(sys.argv[3])
for p, b in ((128, b128), (512, b512)):
    pp = next(r["avg_ts"] for r in lcb if r["n_prompt"] == p and r["n_gen"] == 0)
    print(f"| prompt {p} | {b['prompt_tok_per_s']:,.1f} | {pp:,.1f} | {b['prompt_tok_per_s'] / pp:.3f} |")
tg = next(r["avg_ts"] for r in lcb if r["n_gen"] == 128 and r["n_prompt"] == 0)
for g in b128["generate"]:
    print(f"| generate 128, {g['sequences']} sequence{'s' if g['sequences'] > 1 else ''} | "
          f"{g['tok_per_s']:,.1f} | {tg:,.1f} (1 sequence) | {g['tok_per_s'] / tg:.2f} |")
PY
echo
echo "Strata: strata bench --inference (medians of 2 runs after a warm-up; prompt passes of up"
echo "to 256 tokens; 8 sequences: their total); llama.cpp: llama-bench, averages of its"
echo "repetitions."
echo
# Greedy tokens of both on a model trained enough that its choices are clear.
head -c 30000 /usr/share/common-licenses/GPL-3 >"$work/corpus.txt"
"$strata" train --arch llama --layers 4 --embd 128 --heads 4 --kv-heads 2 --inner 256 \
    --positions 128 --seq 64 --batch 16 --steps 300 --lr 3e-3 --eval-every 0 \
    --data "$work/corpus.txt" --out "$work/t" >/dev/null 2>&1
PYTHONPATH="$lc/src/gguf-py" /usr/bin/python3 "$here/llama_cpp_gguf.py" "$work/t" "$work/t.gguf"
same=0
for prompt in "The licenses " "This License" "  0. Definitions" "You may "; do
    ids=$(printf '%s' "$prompt" | od -An -tu1 | tr -s ' \n' ' ')
    theirs=$(echo $ids | "$lc/llama_cpp_greedy" "$work/t.gguf" 60 "$threads" 2>/dev/null)
    n=$(wc -w <<<"$ids")
    ours=$("$strata" generate --model "$work/t" --prompt "$prompt" -n 60 --temperature 0 \
        2>/dev/null | od -An -tu1 | tr -s ' \n' ' ' | cut -d' ' -f$((n + 2))-$((n + 61)))
    if [ "$(echo $ours)" = "$theirs" ]; then
        same=$((same + 1))
    else
        echo "greedy tokens differ after '$prompt':"
        echo "  Strata:    $(echo $ours)"
        echo "  llama.cpp: $theirs"
    fi
done
echo "greedy tokens: $same of 4 prompts give the same 60 tokens in Strata and llama.cpp"
[ "$same" = 4 ]
