#!/usr/bin/python3
"""bench_torch.py - the PyTorch side of tools/bench_gpt.sh: the same GPT-2
model as Strata's (pre-LayerNorm, tanh GELU, tied head, fp32), trained with
AdamW on random tokens, and generation with a KV cache, on the CPU with a
given number of threads. Prints one JSON line.

usage: bench_torch.py --layers L --embd C --heads NH --positions P --vocab V
                      --batch B --seq T --steps S --gen N --threads K
Needs Debian's python3-torch.
"""
import argparse
import json
import math
import time

import torch


def gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


class GPT(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        C, F = a.embd, 4 * a.embd
        self.a = a
        self.wte = torch.nn.Parameter(0.02 * torch.randn(a.vocab, C))
        self.wpe = torch.nn.Parameter(0.02 * torch.randn(a.positions, C))
        self.blocks = torch.nn.ModuleList()
        for _ in range(a.layers):
            b = torch.nn.Module()
            b.ln_1 = torch.nn.LayerNorm(C)
            b.c_attn = torch.nn.Linear(C, 3 * C)
            b.c_proj = torch.nn.Linear(C, C)
            b.ln_2 = torch.nn.LayerNorm(C)
            b.c_fc = torch.nn.Linear(C, F)
            b.mlp_proj = torch.nn.Linear(F, C)
            self.blocks.append(b)
        self.ln_f = torch.nn.LayerNorm(C)

    def forward(self, idx, cache=None, pos=0):
        B, T = idx.shape
        C, NH = self.a.embd, self.a.heads
        hs = C // NH
        x = self.wte[idx] + self.wpe[pos:pos + T]
        for i, b in enumerate(self.blocks):
            q, k, v = b.c_attn(b.ln_1(x)).split(C, dim=-1)
            q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in (q, k, v))
            if cache is not None:
                if i in cache:
                    k = torch.cat([cache[i][0], k], dim=2)
                    v = torch.cat([cache[i][1], v], dim=2)
                cache[i] = (k, v)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            if T > 1:
                mask = torch.ones(T, k.shape[2], dtype=torch.bool).tril(k.shape[2] - T)
                att = att.masked_fill(~mask, float("-inf"))
            y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
            x = x + b.c_proj(y)
            x = x + b.mlp_proj(gelu(b.c_fc(b.ln_2(x))))
        return self.ln_f(x) @ self.wte.T


def main():
    p = argparse.ArgumentParser()
    for name, default in [("layers", 2), ("embd", 128), ("heads", 4), ("positions", 12),
                          ("vocab", 256), ("batch", 32), ("seq", 12), ("steps", 10),
                          ("gen", 64), ("threads", 2)]:
        p.add_argument("--" + name, type=int, default=default)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    model = GPT(a)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    times = []
    for _ in range(a.steps + 1):
        idx = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
        t0 = time.perf_counter()
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, a.vocab), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[1:])[len(times[1:]) // 2]  # median after the first step
    with torch.no_grad():
        n = min(a.gen, a.positions)
        cache = {}
        tok = torch.zeros(1, 1, dtype=torch.long)
        model(tok, cache, 0)
        t0 = time.perf_counter()
        for pos in range(1, n):
            logits = model(tok, cache, pos)
            tok = logits[:, -1].argmax(-1, keepdim=True)
        gen_s = time.perf_counter() - t0
    print(json.dumps({"train_tok_per_s": a.batch * a.seq / step_s, "step_ms": step_s * 1e3,
                      "gen_tok_per_s": (n - 1) / gen_s, "threads": a.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
