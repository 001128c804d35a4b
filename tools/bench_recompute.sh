#!/bin/bash
# bench_recompute.sh - activation recomputation against keeping every
# activation, on one device: the device memory peak and the time of a
# training step (the mean of the steps after the first) of the same run with
# --recompute off and on, and their ratios. The losses of the two must be
# equal, bitwise (it fails otherwise).
#
# usage: tools/bench_recompute.sh [build/strata] [model flags...]
#   default model: Llama 12 x 768 (12 heads), T 512, batch 2 in 1 micro-batch
set -euo pipefail
strata=$(realpath "${1:-build/strata}")
shift || true
model=("$@")
[ ${#model[@]} -gt 0 ] || model=(--arch llama --layers 12 --embd 768 --heads 12 --seq 512 --batch 2
    --micro-batches 1 --steps 4)
work=$(mktemp -d /tmp/strata-recompute-XXXXXX)
trap 'rm -rf "$work"' EXIT
text=$work/text.txt
for f in /usr/share/common-licenses/*; do [ -f "$f" ] && cat "$f"; done >"$text" 2>/dev/null || true
[ -s "$text" ] || for i in $(seq 1 20000); do echo "line $i of some text to train on"; done >"$text"
export STRATA_PROGRESS=0
for rc in off on; do
    "$strata" train "${model[@]}" --data "$text" --devices 0 --eval-every 0 --eval-batches 1 \
        --recompute $rc --out "$work/$rc" --log-json "$work/$rc.json" >"$work/$rc.log" 2>&1 ||
        { cat "$work/$rc.log" >&2; exit 1; }
done
peak() { sed -n 's/.*device memory peak \([0-9.]*\) \([KMG]\)iB.*/\1 \2/p' "$1" | tail -1 |
    awk '{ m = $2 == "K" ? 1/1024 : $2 == "G" ? 1024 : 1; print $1 * m }'; }
ms() { grep '"event":"step"' "$1" | tail -n +2 | sed 's/.*"ms":\([0-9.]*\).*/\1/' |
    awk '{ s += $1; n++ } END { print s / n }'; }
# the plan table's stage line: params MB, then activations MB (MiB)
col() { awk -v k="$2" '/^0 / { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+$/ && ++n == k) { print $i; exit } }' "$1"; }
act() { col "$1" 2; }
par() { col "$1" 1; }
cmp -s <(grep '"event":"step"' "$work/off.json" | sed 's/"ms".*//') \
    <(grep '"event":"step"' "$work/on.json" | sed 's/"ms".*//') ||
    { echo "FAIL: the losses with and without recomputation differ" >&2; exit 1; }
po=$(peak "$work/off.log") pn=$(peak "$work/on.log") mo=$(ms "$work/off.json") mn=$(ms "$work/on.json")
ao=$(act "$work/off.log") an=$(act "$work/on.log")
echo "model: ${model[*]}"
printf 'planned activations: %s MiB kept, %s MiB recomputing (%.2fx less)\n' "$ao" "$an" \
    "$(awk -v a="$ao" -v b="$an" 'BEGIN { print a / b }')"
printf 'device memory peak: %.1f MiB kept, %.1f MiB recomputing (%.2fx less)\n' "$po" "$pn" \
    "$(awk -v a="$po" -v b="$pn" 'BEGIN { print a / b }')"
pp=$(par "$work/off.log")
printf 'the peak less the planned weights, gradients and moments (%s MiB): %.1f MiB kept, %.1f recomputing (%.2fx less)\n' \
    "$pp" "$(awk -v a="$po" -v p="$pp" 'BEGIN { print a - p }')" "$(awk -v a="$pn" -v p="$pp" 'BEGIN { print a - p }')" \
    "$(awk -v a="$po" -v b="$pn" -v p="$pp" 'BEGIN { print (a - p) / (b - p) }')"
printf 'step: %.0f ms kept, %.0f ms recomputing (x%.3f)\n' "$mo" "$mn" \
    "$(awk -v a="$mo" -v b="$mn" 'BEGIN { print b / a }')"
echo "losses: equal, bitwise"
