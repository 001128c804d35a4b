#!/bin/bash
# hf_check.sh - a model trained by Strata loads into Hugging Face transformers
# as GPT2LMHeadModel and computes the same: the loss on a text file (relative
# difference under 1e-4) and the same greedy continuation of a prompt.
#
# usage: tools/hf_check.sh [build/strata]
# Needs python3-torch and, on PYTHONPATH, transformers and safetensors, e.g.
#   pip install --target /tmp/hf transformers==4.36.2 safetensors && PYTHONPATH=/tmp/hf
set -euo pipefail
strata=${1:-build/strata}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/strata-hf-XXXXXX)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 300); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >"$work/text.txt"
"$strata" train --data "$work/text.txt" --seq 32 --layers 2 --embd 64 --heads 4 --batch 16 \
    --steps 60 --eval-every 0 --out "$work/m" --log-every 1000 >/dev/null
st_loss=$("$strata" eval --model "$work/m" --data "$work/text.txt" --seq 32 | sed -n 's/.*| loss \([0-9.]*\) |.*/\1/p')
st_text=$("$strata" generate --model "$work/m" --prompt "line 7" -n 20 --temperature 0 2>/dev/null)
hf=$(/usr/bin/python3 "$here/hf_check.py" "$work/m" "$work/text.txt" 32 "line 7" 20)
/usr/bin/python3 - "$st_loss" "$st_text" "$hf" <<'PY'
import json, sys
st_loss, st_text, hf = float(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
rel = abs(st_loss - hf["loss"]) / hf["loss"]
print(f"loss: Strata {st_loss:.6f}, transformers {hf['loss']:.6f} (relative difference {rel:.1e}; "
      f"Strata prints 4 decimals)")
print(f"greedy: Strata {st_text!r}\n        transformers {hf['text']!r}")
ok = rel < 1e-4 + 5e-5 / hf["loss"] and st_text == hf["text"]
print("hf_check:", "same" if ok else "DIFFERENT")
sys.exit(0 if ok else 1)
PY
