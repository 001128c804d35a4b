#!/bin/bash
# hf_check.sh - Strata and Hugging Face transformers read each other's models
# and compute the same: the loss on a text file (relative difference under
# 1e-4) and the same greedy continuation of a prompt.
#   1. GPT-2 and a Llama model (grouped-query attention) trained by Strata,
#      loaded by transformers (AutoModelForCausalLM.from_pretrained);
#   2. a Llama and a Qwen2 model written by transformers (save_pretrained in
#      bfloat16, in shards with an index), loaded by Strata.
#
# usage: tools/hf_check.sh [build/strata]
# Needs python3-torch and, on PYTHONPATH, transformers and safetensors, e.g.
#   pip install --target /tmp/hf transformers==4.44.2 safetensors && rm -rf /tmp/hf/numpy*
#   PYTHONPATH=/tmp/hf tools/hf_check.sh
set -euo pipefail
strata=${1:-build/strata}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/strata-hf-XXXXXX)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 300); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >"$work/text.txt"
status=0

# compare NAME MODEL_DIR: Strata's eval and greedy text against transformers'
compare() {
    local st_loss st_text hf
    st_loss=$("$strata" eval --model "$2" --data "$work/text.txt" --seq 32 | sed -n 's/.*| loss \([0-9.]*\) |.*/\1/p')
    st_text=$("$strata" generate --model "$2" --prompt "line 7" -n 20 --temperature 0 2>/dev/null)
    if ! hf=$(/usr/bin/python3 "$here/hf_check.py" "$2" "$work/text.txt" 32 "line 7" 20 2>"$work/py.err"); then
        echo "$1: transformers could not load the model:" >&2
        tail -3 "$work/py.err" >&2
        status=1
        return
    fi
    /usr/bin/python3 - "$1" "$st_loss" "$st_text" "$hf" <<'PY' || status=1
import json, sys
what, st_loss, st_text, hf = sys.argv[1], float(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
rel = abs(st_loss - hf["loss"]) / hf["loss"]
print(f"{what}: loss: Strata {st_loss:.6f}, transformers {hf['loss']:.6f} (relative difference "
      f"{rel:.1e}; Strata prints 4 decimals)")
# Tokens are bytes: compare them as bytes (the shell passed Strata's raw).
st_bytes, hf_bytes = st_text.encode("utf-8", "surrogateescape"), hf["text"].encode("latin-1")
print(f"{what}: greedy: Strata {st_bytes!r}\n{' ' * len(what)}          transformers {hf_bytes!r}")
ok = rel < 1e-4 + 5e-5 / hf["loss"] and st_bytes == hf_bytes
print(f"{what}:", "same" if ok else "DIFFERENT")
sys.exit(0 if ok else 1)
PY
}

train=(--data "$work/text.txt" --seq 32 --layers 2 --embd 64 --heads 4 --batch 16 --steps 60
       --eval-every 0 --log-every 1000)
"$strata" train "${train[@]}" --out "$work/gpt2" >/dev/null
compare "GPT-2 from Strata" "$work/gpt2"
"$strata" train "${train[@]}" --arch llama --kv-heads 2 --out "$work/llama" >/dev/null
compare "Llama from Strata" "$work/llama"
for kind in llama qwen2; do
    /usr/bin/python3 "$here/hf_make.py" "$kind" "$work/hf-$kind" 2>"$work/py.err" ||
        { echo "$kind: transformers could not write the model:" >&2; tail -3 "$work/py.err" >&2; status=1; continue; }
    ls "$work/hf-$kind" | grep -q 'model.safetensors.index.json' || { echo "no shards for $kind"; status=1; }
    compare "$kind from transformers (bf16, sharded)" "$work/hf-$kind"
done
echo "hf_check: $([ $status = 0 ] && echo all same || echo SOME DIFFERENT)"
exit $status
