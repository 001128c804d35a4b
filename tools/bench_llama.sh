#!/bin/bash
# bench_llama.sh - training and generation tokens/s of Strata's Llama family
# on one OpenCL device against the same model in Hugging Face transformers
# (LlamaForCausalLM, PyTorch on the CPU), one after the other in one run: a
# small model and a 12-layer, 768-wide one with grouped-query attention.
#
# usage: tools/bench_llama.sh [build/strata] [threads]
#   STRATA_DEVICES picks the device (default: the first). transformers gets
#   `threads` threads (default: the number of cores), PoCL the same through
#   POCL_MAX_PTHREAD_COUNT. Needs python3-torch with libopenblas0-pthread, and
#   transformers on PYTHONPATH (see tools/hf_check.sh).
set -euo pipefail
strata=${1:-build/strata}
threads=${2:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/strata-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
export POCL_MAX_PTHREAD_COUNT=$threads
head -c 2000000 /dev/urandom | base64 >"$work/text.txt"

median_ms() { # the median step time after the first step, from a --log-json file
    /usr/bin/python3 -c '
import json, sys
ms = [json.loads(l)["ms"] for l in open(sys.argv[1]) if "\"event\":\"step\"" in l][1:]
ms.sort()
print(ms[len(ms) // 2])' "$1"
}

run() { # name layers embd heads kv_heads inner seq batch steps gen
    local name=$1 L=$2 C=$3 NH=$4 KV=$5 F=$6 T=$7 B=$8 S=$9 G=${10}
    "$strata" train --arch llama --data "$work/text.txt" --layers "$L" --embd "$C" --heads "$NH" \
        --kv-heads "$KV" --inner "$F" --seq "$T" --batch "$B" --steps "$S" --eval-every 0 \
        --eval-batches 1 --out "$work/$name" --log-json "$work/$name.json" \
        --log-every 1000000 >/dev/null
    local ms st_train st_gen hf
    ms=$(median_ms "$work/$name.json")
    st_train=$(/usr/bin/python3 -c "print($B * $T / ($ms / 1000))")
    st_gen=$("$strata" generate --model "$work/$name" --prompt "a" -n "$G" --temperature 0 \
        2>&1 >/dev/null | sed -n 's/.*s | \([0-9.]*\) tok\/s.*/\1/p')
    hf=$(/usr/bin/python3 "$here/bench_llama.py" --layers "$L" --embd "$C" --heads "$NH" \
        --kv-heads "$KV" --inner "$F" --positions "$T" --seq "$T" --batch "$B" --steps "$S" \
        --gen "$G" --threads "$threads" 2>/dev/null)
    /usr/bin/python3 -c '
import json, sys
name, st_train, st_gen, t = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
tt, tg = t["train_tok_per_s"], t["gen_tok_per_s"]
print(f"| {name} | train | {st_train:,.0f} | {tt:,.0f} | {st_train / tt:.2f} |")
print(f"| {name} | generate | {st_gen:,.1f} | {tg:,.1f} | {st_gen / tg:.2f} |")
' "$name" "$st_train" "$st_gen" "$hf"
}

echo "device: $("$strata" devices | sed -n 2p | tr -s " ")"
echo "threads: $threads (PoCL, and PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') under transformers)"
echo
echo "| model | work | Strata tok/s | transformers tok/s | Strata / transformers |"
echo "|---|---|---|---|---|"
run "4x256, 4 heads, 2 KV (batch 8x64)" 4 256 4 2 704 64 8 6 63
run "12x768, 12 heads, 4 KV (batch 4x64)" 12 768 12 4 2048 64 4 4 63
