#!/bin/bash
# bench_mpi.sh - training over MPI ranks: the same model and global batch on
# 1 rank and on 2 ranks (one PoCL device and one thread per rank), one after
# the other in one run: step time, speedup, efficiency, and the share of the
# step rank 0's stage spends waiting on its links (communication and the
# pipeline bubble).
#
# usage: tools/bench_mpi.sh [build/strata] [steps]
set -euo pipefail
strata=${1:-build/strata}
steps=${2:-6}
work=$(mktemp -d /tmp/strata-bench-mpi-XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export POCL_DEVICES=basic POCL_MAX_PTHREAD_COUNT=1
head -c 2000000 /dev/urandom | base64 >"$work/text.txt"
model=(--data "$work/text.txt" --layers 8 --embd 192 --heads 4 --seq 64 --batch 32
       --micro-batches 16 --steps "$steps" --eval-every 0 --eval-batches 1 --log-every 1000000)

stats() { # json -> "median_ms median_wait_ms" over the steps after the first
    /usr/bin/python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if "\"event\":\"step\"" in l][1:]
ms = sorted(e["ms"] for e in ev); w = sorted(e["link_wait_ms"] for e in ev)
print(ms[len(ms) // 2], w[len(w) // 2])' "$1"
}
"$strata" train "${model[@]}" --log-json "$work/one.json" >/dev/null
mpirun --oversubscribe -np 2 "$strata" train "${model[@]}" --split uniform --log-json "$work/two.json" >"$work/two.log"
read -r one _ <<<"$(stats "$work/one.json")"
read -r two wait <<<"$(stats "$work/two.json")"
/usr/bin/python3 -c '
import sys
one, two, wait = map(float, sys.argv[1:4])
print("| ranks | step ms | speedup | efficiency | rank 0 waiting on links |")
print("|---|---|---|---|---|")
print(f"| 1 | {one:,.0f} | 1.00x | 1.00 | - |")
print(f"| 2 | {two:,.0f} | {one / two:.2f}x | {one / two / 2:.2f} | {wait:,.0f} ms ({100 * wait / two:.0f}%) |")
' "$one" "$two" "$wait"
grep "predicted step" "$work/two.log"
