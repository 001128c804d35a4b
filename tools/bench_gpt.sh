#!/bin/bash
# bench_gpt.sh - training and generation tokens/s of Strata on one OpenCL
# device against the same model in PyTorch on the CPU, one after the other
# in one run, for the default model and a 12-layer, 768-wide one.
#
# usage: tools/bench_gpt.sh [build/strata] [threads]
#   STRATA_DEVICES picks the device (default: the first). PyTorch gets
#   `threads` threads (default: the number of cores), PoCL the same through
#   POCL_MAX_PTHREAD_COUNT.
# Needs python3-torch (apt-get install python3-torch). Debian's PyTorch does
# its matrix products through the system BLAS: install libopenblas0-pthread,
# or it runs on the slow reference BLAS and the comparison means little.
set -euo pipefail
strata=${1:-build/strata}
threads=${2:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/strata-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
export POCL_MAX_PTHREAD_COUNT=$threads

median_ms() { # the median step time after the first step, from a --log-json file
    /usr/bin/python3 -c '
import json, sys
ms = [json.loads(l)["ms"] for l in open(sys.argv[1]) if "\"event\":\"step\"" in l][1:]
ms.sort()
print(ms[len(ms) // 2])' "$1"
}

run() { # name layers embd heads seq batch steps gen
    local name=$1 L=$2 C=$3 NH=$4 T=$5 B=$6 S=$7 G=$8
    local data=addition
    if [ "$T" != 12 ]; then
        head -c 2000000 /dev/urandom | base64 >"$work/text.txt"
        data=$work/text.txt
    fi
    "$strata" train --data "$data" --layers "$L" --embd "$C" --heads "$NH" --seq "$T" \
        --batch "$B" --steps "$S" --eval-every 0 --eval-batches 1 --out "$work/$name" \
        --log-json "$work/$name.json" --log-every 1000000 >/dev/null
    local ms
    ms=$(median_ms "$work/$name.json")
    local st_train st_gen
    st_train=$(/usr/bin/python3 -c "print($B * $T / ($ms / 1000))")
    st_gen=$("$strata" generate --model "$work/$name" --prompt "a" -n "$G" --temperature 0 \
        2>&1 >/dev/null | sed -n 's/.*s | \([0-9.]*\) tok\/s.*/\1/p')
    local torch
    torch=$(/usr/bin/python3 "$here/bench_torch.py" --layers "$L" --embd "$C" --heads "$NH" \
        --positions "$T" --seq "$T" --batch "$B" --steps "$S" --gen "$G" --threads "$threads")
    /usr/bin/python3 -c '
import json, sys
name, st_train, st_gen, t = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
tt, tg = t["train_tok_per_s"], t["gen_tok_per_s"]
print(f"| {name} | train | {st_train:,.0f} | {tt:,.0f} | {st_train / tt:.2f} |")
print(f"| {name} | generate | {st_gen:,.1f} | {tg:,.1f} | {st_gen / tg:.2f} |")
' "$name" "$st_train" "$st_gen" "$torch"
}

echo "device: $("$strata" devices | sed -n 2p | tr -s " ")"
echo "PyTorch BLAS: $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)"
echo "threads: $threads (PoCL and PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'))"
echo
echo "| model | work | Strata tok/s | PyTorch tok/s | Strata / PyTorch |"
echo "|---|---|---|---|---|"
run "default (2x64, batch 64x12)" 2 64 4 12 64 30 11
run "12x768 (batch 4x64)" 12 768 12 64 4 4 63
