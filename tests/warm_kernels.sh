#!/bin/bash
# warm_kernels.sh - compiles, once, the kernels the script tests use, into
# PoCL's compile cache (POCL_CACHE_DIR): tiny GPT-2 and Llama runs that
# train, evaluate and generate (16-bit weights and KV caches too), on PoCL's
# pthread and basic drivers. The suite starts with it, alone (meson:
# is_parallel false, the highest priority), so that the tests that start
# together next do not each compile the same kernels at once: on a cold
# 2-core machine one tiny run spent 109 s compiling and 2.5 s once PoCL had
# them, and the suite's first six tests compiled them side by side.
# It checks nothing beyond the runs' exit status (the tests do).
#
# usage: warm_kernels.sh path/to/strata
set -u
strata=$1
work=$(mktemp -d /tmp/strata-warm-XXXXXX)
trap 'rm -rf "$work"' EXIT
export STRATA_PROGRESS=0
run() {
    local log
    log=$(mktemp "$work/log-XXXXXX")
    "$strata" "$@" >"$log" 2>&1 || { echo "FAIL: strata $*: $(tail -3 "$log")"; return 1; }
}
gpt=(--layers 2 --embd 16 --heads 2 --batch 4 --eval-batches 1 --steps 2 --warmup 1)
llama=(--arch llama --kv-heads 1 --layers 2 --embd 32 --heads 2 --batch 4 --eval-batches 1
       --steps 2 --warmup 1)
# One driver's runs of the families given. PoCL compiles a kernel on one
# core, so the two drivers' runs go side by side (cold: 144 s, against 278 s
# one after the other).
warm() {
    export POCL_DEVICES=$1
    local ok=0 m
    for m in "${@:2}"; do
        if [ "$m" = g ]; then
            run train "${gpt[@]}" --out "$work/g-$1" || ok=1
        else
            run train "${llama[@]}" --out "$work/l-$1" || ok=1
        fi
        run eval --model "$work/$m-$1" || ok=1
        for dt in fp32 bf16 fp16; do
            run generate --model "$work/$m-$1" --prompt 1 --prompt 23 -n 3 --dtype "$dt" || ok=1
        done
    done
    return $ok
}
warm basic g l &
basic=$!
status=0
warm pthread g l || status=1
wait $basic || status=1
exit $status
