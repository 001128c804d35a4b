#!/usr/bin/python3
"""bench_llama.py - the transformers side of tools/bench_llama.sh: the same
Llama-family model as Strata's (LlamaForCausalLM from a config, fp32, eager
attention), trained with AdamW and gradient clipping on random tokens, and
generation with its KV cache, on the CPU with a given number of threads.
Prints one JSON line.

usage: bench_llama.py --layers L --embd C --heads NH --kv-heads KV --inner F
                      --positions P --vocab V --batch B --seq T --steps S --gen N --threads K
Needs Debian's python3-torch and transformers (pip) on PYTHONPATH.
"""
import argparse
import json
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM


def main():
    p = argparse.ArgumentParser()
    for name, default in [("layers", 2), ("embd", 128), ("heads", 4), ("kv_heads", 2),
                          ("inner", 352), ("positions", 64), ("vocab", 256), ("batch", 8),
                          ("seq", 64), ("steps", 10), ("gen", 64), ("threads", 2)]:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.embd, intermediate_size=a.inner,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads,
                      num_key_value_heads=a.kv_heads, max_position_embeddings=a.positions,
                      tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    times = []
    for _ in range(a.steps + 1):
        idx = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
        t0 = time.perf_counter()
        logits = model(idx[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, a.vocab), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[1:])[len(times[1:]) // 2]  # median after the first step
    model.eval()
    with torch.no_grad():
        n = min(a.gen, a.positions)
        past = DynamicCache()
        tok = torch.zeros(1, 1, dtype=torch.long)
        out = model(tok, past_key_values=past, use_cache=True)
        t0 = time.perf_counter()
        for _ in range(1, n):
            out = model(tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        gen_s = time.perf_counter() - t0
    print(json.dumps({"train_tok_per_s": a.batch * a.seq / step_s, "step_ms": step_s * 1e3,
                      "gen_tok_per_s": (n - 1) / gen_s, "threads": a.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
