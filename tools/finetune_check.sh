#!/bin/bash
# finetune_check.sh - fine-tuning against the Hugging Face libraries, end to
# end: a published-style folder made by transformers (Llama, 8 layers x 512,
# 8 heads, 2 key/value heads, bf16 in several shards, a tokenizer trained by
# the `tokenizers` library) and a LoRA adapter saved by peft
# (tools/finetune_check.py), then
#   1. `strata train --init` of the folder: its step 1 loss on an example
#      against transformers' loss on the same tokens;
#   2. `strata eval` of the folder against transformers;
#   3. `strata eval --adapter` against transformers with peft's adapter;
#   4. `strata merge`: the merged folder in transformers against Strata's eval
#      of it, and against peft's own merge_and_unload;
#   5. `strata eval` of JSON Lines (prompts and completions, texts), its
#      rows packed and not, against each example alone in transformers;
#   6. `strata train --init --lora` over two devices (POCL_DEVICES="basic
#      basic" on a CPU): the loss on the text falls, the adapter folder it
#      writes, loaded by peft onto transformers' model, gives Strata's eval
#      loss, and its merged folder does in transformers;
# each a relative difference under 1e-4.
#
# usage: tools/finetune_check.sh [build/strata]
# Needs Debian's python3-torch; installs transformers, peft, accelerate,
# tokenizers and safetensors from PyPI into build/hfpackages once (pip
# --target, without their dependencies on torch and numpy: Debian's are used).
# Exit status: 0 all close, 1 a difference or a failure, 77 skipped: the
# Python packages could not be installed (no PyPI), said on stderr.
# tools/test.sh runs it after the suite.
set -euo pipefail
strata=$(realpath "${1:-build/strata}")
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
pk=${STRATA_HF_PACKAGES:-$here/../build/hfpackages}
if ! $py -c 'import torch' 2>/dev/null; then
    echo "finetune_check: Debian's python3-torch is missing (apt-get install python3-torch)" >&2
    exit 1
fi
# Installed through pip --target, as tools/setup.sh installs openai; without PyPI: skipped.
if ! PYTHONPATH=$pk $py -c 'import transformers, peft, tokenizers, safetensors' 2>/dev/null; then
    echo "finetune_check: installing transformers, peft and their helpers (PyPI) into $pk" >&2
    rm -rf "$pk.new"
    if ! $py -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --target "$pk.new" --no-deps transformers==4.44.2 \
        peft==0.12.0 accelerate==0.33.0 huggingface_hub==0.24.6 tokenizers==0.19.1 \
        safetensors==0.4.4 regex requests tqdm pyyaml packaging filelock fsspec psutil urllib3 \
        idna certifi charset-normalizer typing_extensions; then
        rm -rf "$pk.new"
        echo "finetune_check: skipped: the Python packages could not be installed from PyPI" >&2
        exit 77
    fi
    rm -rf "$pk"
    mv "$pk.new" "$pk"
fi
export PYTHONPATH=$pk STRATA_PROGRESS=0
hf() { $py "$here/finetune_check.py" "$@" 2>"$work/py.err" || { cat "$work/py.err" >&2; exit 1; }; }
work=$(mktemp -d /tmp/strata-finetune-XXXXXX)
trap 'rm -rf "$work"' EXIT
text=$work/text.txt
if [ -r /usr/share/common-licenses/GPL-3 ]; then
    head -c 12000 /usr/share/common-licenses/GPL-3 >"$text"
else
    for i in $(seq 1 300); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >"$text"
fi
status=0
# close NAME STRATA REFERENCE: relative difference under 1e-4
close() {
    if $py -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-4 * abs(b))' "$2" "$3"; then
        printf 'ok   %s: Strata %.6f, reference %.6f\n' "$1" "$2" "$3"
    else
        printf 'FAIL %s: Strata %.6f, reference %.6f\n' "$1" "$2" "$3"
        status=1
    fi
}
json() { $py -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
st_eval() { "$strata" eval "$@" --seq 64 2>/dev/null | sed -n 's/.*| loss \([0-9.]*\) |.*/\1/p'; }

echo "making the model folder and the adapter with transformers and peft..." >&2
hf make "$work" "$text" >"$work/made.json"
echo "made: $(tail -1 "$work/made.json"); shards: $(ls "$work/base" | grep -c '^model-')" >&2

# 1. --init: step 1 of a run whose every training example is this line
line="This License applies to any program or other work which contains a notice"
for i in $(seq 1 9); do printf '{"text": "%s"}\n' "$line"; done >"$work/same.jsonl"
printf '{"text": "%s"}\n' "Everyone is permitted to copy and distribute verbatim copies" >>"$work/same.jsonl"
"$strata" train --init "$work/base" --data "$work/same.jsonl" --seq 64 --batch 2 --steps 1 \
    --lr 1e-9 --warmup 0 --eval-batches 1 --out "$work/run" --log-json "$work/run.json" >"$work/train.log" 2>&1 ||
    { cat "$work/train.log" >&2; exit 1; }
st=$(grep '"event":"step"' "$work/run.json" | head -1 | sed 's/.*"loss":\([0-9.]*\).*/\1/')
close "train --init: step 1 loss" "$st" "$(hf example-loss "$work/base" "$line" | json loss)"
# 2. eval of the folder
close "eval of the bf16 folder" "$(st_eval --model "$work/base" --data "$text")" \
    "$(hf eval "$work/base" "$text" 64 | json loss)"
# 3. the adapter
close "eval --adapter (peft's folder)" \
    "$(st_eval --model "$work/base" --adapter "$work/adapter" --data "$text")" \
    "$(hf eval "$work/base" "$work/adapter" "$text" 64 | json loss)"
# 4. merged
"$strata" merge --model "$work/base" --adapter "$work/adapter" --out "$work/merged" >/dev/null
close "strata merge: eval of the merged folder, transformers" \
    "$(st_eval --model "$work/merged" --data "$text")" "$(hf eval "$work/merged" "$text" 64 | json loss)"
hf peft-merge "$work/base" "$work/adapter" "$work/peft-merged"
close "strata merge against peft's merge_and_unload (transformers on both)" \
    "$(hf eval "$work/merged" "$text" 64 | json loss)" "$(hf eval "$work/peft-merged" "$text" 64 | json loss)"
# 5. JSON Lines, prompts and completions and texts: Strata's packed rows
# (several examples a row, each from position 0 and attending only itself)
# and its rows of one example each, against each example alone in transformers
$py - "$text" >"$work/ex.jsonl" <<'PY'
import json, sys
lines = [l.strip() for l in open(sys.argv[1], encoding='utf-8') if len(l.strip()) > 20][:48]
for i, l in enumerate(lines):
    cut = len(l) // 2
    print(json.dumps({'text': l} if i % 3 == 0 else {'prompt': l[:cut], 'completion': l[cut:]}))
PY
ref=$(hf jsonl-loss "$work/base" "$work/ex.jsonl" 64 | json loss)
close "eval of JSON Lines, packed rows" "$(st_eval --model "$work/base" --data "$work/ex.jsonl")" "$ref"
close "eval of JSON Lines, one example a row" \
    "$(st_eval --model "$work/base" --data "$work/ex.jsonl" --pack off)" "$ref"
# 6. LoRA fine-tuning of the folder, on two devices
before=$(st_eval --model "$work/base" --data "$text")
POCL_DEVICES="${STRATA_LORA_POCL_DEVICES:-basic basic}" "$strata" train --init "$work/base" \
    --lora 8 --lora-alpha 16 --data "$text" --seq 64 --batch 4 --steps 10 --lr 2e-2 --warmup 2 \
    --eval-every 10 --eval-batches 1 --out "$work/lora" >"$work/lora.log" 2>&1 || { cat "$work/lora.log" >&2; exit 1; }
grep -E '^(parameters|plan|done)' "$work/lora.log" >&2 || true
after=$(st_eval --model "$work/base" --adapter "$work/lora" --data "$text")
if $py -c 'import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))' "$after" "$before"; then
    printf 'ok   LoRA fine-tuning lowers the loss on the text: %.6f -> %.6f\n' "$before" "$after"
else
    printf 'FAIL LoRA fine-tuning did not lower the loss on the text: %.6f -> %.6f\n' "$before" "$after"
    status=1
fi
close "eval --adapter of Strata's LoRA run against peft loading it" "$after" \
    "$(hf eval "$work/base" "$work/lora" "$text" 64 | json loss)"
"$strata" merge --model "$work/base" --adapter "$work/lora" --out "$work/lora-merged" >/dev/null
close "the merged LoRA run in transformers against Strata's eval --adapter" "$after" \
    "$(hf eval "$work/lora-merged" "$text" 64 | json loss)"
exit $status
