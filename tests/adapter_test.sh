#!/usr/bin/env bash
# adapter_test.sh - LoRA adapters in PEFT's format: generate, eval and serve
# with --adapter, and `strata merge`, against the merged weights computed
# independently in plain Python (tests/peft_adapter.py): the same greedy
# texts and losses, the same merged tensors; Llama ([out, in] weights) and
# GPT-2 (Conv1D, [in, out]), F32 and BF16 bases; adapters that do not fit are
# refused by name.
#
# usage: adapter_test.sh STRATA
set -uo pipefail
strata=$1
root=${STRATA_SOURCE_ROOT:?}
py=/usr/bin/python3
helper=$root/tests/peft_adapter.py
w=$(mktemp -d /tmp/strata-adapter-XXXXXX)
server=
trap '[ -n "$server" ] && kill -9 $server 2>/dev/null; rm -rf "$w"' EXIT
failures=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; failures=$((failures + 1)); }
check() { if eval "$1"; then ok "$2"; else bad "$2"; fi; }
gen() { "$strata" generate --model "$1" "${@:2}" --prompt "12+3" --prompt "45" -n 10 --temperature 0 2>/dev/null; }
loss() { "$strata" eval --model "$1" "${@:2}" --seq 12 2>/dev/null | sed -n 's/.*| loss \([0-9.]*\) |.*/\1/p'; }

for arch in llama gpt2; do
    flags=(--layers 2 --embd 32 --heads 4 --batch 8 --steps 20 --eval-batches 1)
    [ $arch = llama ] && flags+=(--arch llama --kv-heads 2)
    "$strata" train "${flags[@]}" --out "$w/$arch" >"$w/train.log" 2>&1 || { cat "$w/train.log"; exit 1; }
    $py "$helper" make "$w/$arch" "$w/$arch-ad" 4 8 1 || exit 1
    $py "$helper" merge "$w/$arch" "$w/$arch-ad" "$w/$arch-py" || exit 1
    base=$(gen "$w/$arch")
    with=$(gen "$w/$arch" --adapter "$w/$arch-ad")
    want=$(gen "$w/$arch-py")
    check '[ -n "$with" ] && [ "$with" = "$want" ]' "$arch: generate --adapter equals the merged weights' text"
    check '[ "$with" != "$base" ]' "$arch: the adapter changes the text"
    a=$(loss "$w/$arch" --adapter "$w/$arch-ad")
    b=$(loss "$w/$arch-py")
    check '[ -n "$a" ] && [ "$a" = "$b" ]' "$arch: eval --adapter loss $a, the merged weights' $b"
    out=$("$strata" merge --model "$w/$arch" --adapter "$w/$arch-ad" --out "$w/$arch-merged" 2>&1)
    check '[ $? = 0 ] && grep -q "merged: " <<<"$out"' "$arch: strata merge ($(tail -1 <<<"$out"))"
    check '$py "$helper" compare "$w/$arch-py/model.safetensors" "$w/$arch-merged/model.safetensors" 1e-6' \
        "$arch: merged tensors equal the plain-Python merge"
    check '[ "$(gen "$w/$arch-merged")" = "$want" ]' "$arch: the merged folder generates the same text"
done

# A BF16 base (as published models are) and a BF16 adapter: merged in float,
# written back in BF16 rounded to nearest even, as the Python merge does.
$py "$helper" bf16 "$w/llama" "$w/b16" && $py "$helper" make "$w/b16" "$w/b16-ad" 4 16 2 bf16 &&
    $py "$helper" merge "$w/b16" "$w/b16-ad" "$w/b16-py" bf16 || exit 1
"$strata" merge --model "$w/b16" --adapter "$w/b16-ad" --out "$w/b16-merged" >/dev/null 2>&1
check '[ "$($py "$helper" dtype "$w/b16-merged/model.safetensors")" = BF16 ]' "a BF16 base merges into BF16"
check '$py "$helper" compare "$w/b16-py/model.safetensors" "$w/b16-merged/model.safetensors" 0' \
    "BF16: bitwise the plain-Python merge"
check '[ "$(gen "$w/b16" --adapter "$w/b16-ad")" = "$(gen "$w/b16-merged")" ] || [ "$(loss "$w/b16" --adapter "$w/b16-ad")" = "$(loss "$w/b16-merged")" ]' \
    "BF16: --adapter and the merged folder agree"

# serve --adapter: a greedy completion equals generate --adapter's text
"$strata" serve --model "$w/llama" --adapter "$w/llama-ad" --port 0 >"$w/serve.out" 2>"$w/serve.log" &
server=$!
port=
for _ in $(seq 600); do
    port=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$w/serve.log")
    grep -q "ready:" "$w/serve.log" && break
    sleep 0.1
done
check 'grep -q "adapter: .*LoRA r 4" "$w/serve.log"' "serve says which adapter it merged"
curl -s "http://127.0.0.1:$port/v1/completions" -d '{"prompt": "45", "max_tokens": 10, "temperature": 0}' >"$w/got.json"
"$strata" generate --model "$w/llama" --adapter "$w/llama-ad" --prompt "45" -n 10 --temperature 0 \
    >"$w/want.txt" 2>/dev/null
# the server sends valid UTF-8 (each invalid part U+FFFD); generate prints the
# bytes, and a newline after a text that has none
check '$py -c "
import json, sys
got = json.load(open(sys.argv[1]))[\"choices\"][0][\"text\"]
want = open(sys.argv[2], \"rb\").read()[2:].decode(\"utf-8\", \"replace\")
sys.exit(0 if want in (got, got + chr(10)) else 1)" "$w/got.json" "$w/want.txt"' \
    "serve --adapter: the completion equals generate --adapter's"
kill -TERM $server
wait $server
server=

# Refused: an adapter of another model, a missing one, DoRA, a folder that is not empty.
out=$("$strata" generate --model "$w/gpt2" --adapter "$w/llama-ad" --prompt 1 -n 1 2>&1)
check '[ $? = 2 ] && grep -q "not a weight of the model" <<<"$out"' "an adapter of another model: exit 2, named"
out=$("$strata" eval --model "$w/llama" --adapter "$w/none" 2>&1)
check '[ $? = 2 ] && grep -q "$w/none/adapter_config.json" <<<"$out"' "a missing adapter: exit 2, named"
cp -r "$w/llama-ad" "$w/dora"
sed -i 's/"use_dora": false/"use_dora": true/' "$w/dora/adapter_config.json"
out=$("$strata" merge --model "$w/llama" --adapter "$w/dora" --out "$w/x" 2>&1)
check '[ $? = 2 ] && grep -q "use_dora" <<<"$out"' "a DoRA adapter: exit 2, named"
out=$("$strata" merge --model "$w/llama" --adapter "$w/llama-ad" --out "$w/llama" 2>&1)
check '[ $? = 2 ] && grep -q "is not empty" <<<"$out"' "merge into a folder with files: exit 2"

echo "adapter_test: $failures failure(s)"
[ $failures = 0 ]
