#!/bin/bash
# plan_memory.sh - the memory story: which published Llama shapes the
# planner fits on 2 and on 4 devices of 24 GB (strata plan --mem-limit, from
# the devices' rates alone: --rates-only), for full fine-tuning, full with
# activation recomputation, LoRA (rank 16, every projection) and LoRA with
# recomputation; batch 8 x 1,024 tokens, the planner choosing the layout and
# micro-batches. Prints a Markdown table: per shape and mode, the most any
# device holds (GiB) and the layout (D replicas of S stages), or "no".
#
# usage: tools/plan_memory.sh [build/strata]   (runs on PoCL's basic devices here)
set -u
strata=$(realpath "${1:-build/strata}")
export POCL_DEVICES=${POCL_DEVICES:-"basic basic basic basic"} STRATA_PROGRESS=0
# name: layers embd heads kv-heads inner vocab (tied)
shapes=(
    "TinyLlama-1.1B:22 2048 32 4 5632 32000"
    "Llama-3.2-3B:28 3072 24 8 8192 128256 tie"
    "Llama-2-7B:32 4096 32 32 11008 32000"
    "Llama-3-8B:32 4096 32 8 14336 128256"
    "Llama-2-13B:40 5120 40 40 13824 32000"
)
modes=("full:--recompute off" "full, recomputed:--recompute on"
    "full, recomputed, moments split:--recompute on --shard-optimizer"
    "LoRA 16:--lora 16 --recompute off" "LoRA 16, recomputed:--lora 16 --recompute on")
for nd in 2 4; do
    devs=$(seq -s, 0 $((nd - 1)))
    lim=$(for i in $(seq 0 $((nd - 1))); do printf '%s%d:24G' "$([ "$i" = 0 ] || echo ,)" "$i"; done)
    echo
    echo "$nd x 24 GB:"
    echo
    printf '| model | parameters |'
    for m in "${modes[@]}"; do printf ' %s |' "${m%%:*}"; done
    echo
    printf '|---|---|'
    for m in "${modes[@]}"; do printf -- '---|'; done
    echo
    for sh in "${shapes[@]}"; do
        name=${sh%%:*}
        read -r L C H K F V T <<<"${sh#*:}"
        tie=()
        [ "${T:-}" = tie ] && tie=(--tie)
        row="| $name |"
        params=""
        for m in "${modes[@]}"; do
            read -ra flags <<<"${m#*:}"
            out=$("$strata" plan --arch llama --layers "$L" --embd "$C" --heads "$H" --kv-heads "$K" \
                --inner "$F" --vocab "$V" "${tie[@]}" --positions 1024 --seq 1024 --batch 8 \
                --devices "$devs" --mem-limit "$lim" --rates-only --json "${flags[@]}" 2>&1)
            if [ -z "$params" ]; then
                params=$("$strata" plan --arch llama --layers "$L" --embd "$C" --heads "$H" \
                    --kv-heads "$K" --inner "$F" --vocab "$V" "${tie[@]}" --positions 1024 --seq 1024 \
                    --batch 8 --devices 0 --mem-limit 0:1T --rates-only 2>/dev/null |
                    sed -n 's/^model: .*, \([0-9]*\) parameters.*/\1/p')
                row="$row $(awk -v p="$params" 'BEGIN { printf "%.2fB", p / 1e9 }') |"
            fi
            if grep -q '"stages"' <<<"$out"; then
                cell=$(/usr/bin/python3 -c '
import json, sys
p = json.loads(sys.stdin.read())
worst = max(s["total_bytes"] for s in p["stages"]) / 2**30
n = len(p["stages"])
print("%.1f GiB (dp:%d,pp:%d%s)" % (worst, p["replicas"], n, ", recomputed" if p.get("recompute") else ""))' <<<"$out")
            else
                cell=no
            fi
            row="$row $cell |"
        done
        echo "$row"
    done
done
