#!/usr/bin/python3
"""gpt_reference.py - the independent reference for Strata's GPT: a tiny
GPT-2-style model written directly in PyTorch (autograd, torch.optim.AdamW,
torch.nn.utils.clip_grad_norm_), run from fixed weights, dumped to a binary
file that tests/test_gpt.c loads and matches.

Usage: /usr/bin/python3 tools/gpt_reference.py tests/data/gpt_reference.bin
Needs Debian's python3-torch (apt-get install python3-torch).

File layout (little-endian):
  char[8]  "STRATAGR"            magic
  u32      version (1)
  i32 x 9  V, n_positions, C, L, NH, F, B, T, steps
  f32 x 7  layer_norm_epsilon, lr, beta1, beta2, adam_eps, weight_decay, clip
  i32 [B*T] tokens, i32 [B*T] targets (-1: no loss)
  f32 params in Strata's description order (HF names, Conv1D [in, out])
  f32 [B*T, V] logits; f32 loss; f32 grads in the same order as params
  f32 [steps] loss before each AdamW step; f32 [steps] gradient norm before clipping
  f32 params after the steps
"""
import math
import struct
import sys

import torch

V, NPOS, C, L, NH, B, T, STEPS = 64, 12, 32, 2, 4, 3, 10, 5
F = 4 * C
EPS, LR, BETA1, BETA2, ADAM_EPS, WD, CLIP = 1e-5, 1e-2, 0.9, 0.95, 1e-8, 0.1, 1.0


def param_list():
    """Names and shapes in the order of st_model_describe."""
    out = [("wte.weight", (V, C)), ("wpe.weight", (NPOS, C))]
    for i in range(L):
        p = f"h.{i}."
        out += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
                (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                (p + "mlp.c_fc.weight", (C, F)), (p + "mlp.c_fc.bias", (F,)),
                (p + "mlp.c_proj.weight", (F, C)), (p + "mlp.c_proj.bias", (C,))]
    return out + [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]


def gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(P, tokens):
    x = P["wte.weight"][tokens] + P["wpe.weight"][torch.arange(T)]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    hs = C // NH
    for i in range(L):
        p = f"h.{i}."
        h = torch.nn.functional.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], EPS)
        qkv = h @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
        h = torch.nn.functional.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], EPS)
        h = gelu(h @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"])
        x = x + h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]
    x = torch.nn.functional.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], EPS)
    return x @ P["wte.weight"].T


def main():
    out_path = sys.argv[1]
    gen = torch.Generator().manual_seed(1234)
    P = {}
    for name, shape in param_list():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            t = 0.1 * torch.randn(shape, generator=gen)
        P[name] = t.float().requires_grad_(True)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, :3] = -1  # rows without a target are left out of the mean
    targets[2, 7] = -1

    blobs = []
    f32 = lambda t: t.detach().contiguous().float().numpy().tobytes()
    blobs.append(b"STRATAGR" + struct.pack("<I", 1))
    blobs.append(struct.pack("<9i", V, NPOS, C, L, NH, F, B, T, STEPS))
    blobs.append(struct.pack("<7f", EPS, LR, BETA1, BETA2, ADAM_EPS, WD, CLIP))
    blobs.append(tokens.int().numpy().tobytes() + targets.int().numpy().tobytes())
    names = [n for n, _ in param_list()]
    blobs += [f32(P[n]) for n in names]

    logits = forward(P, tokens)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
    loss.backward()
    blobs.append(f32(logits) + struct.pack("<f", loss.item()))
    blobs += [f32(P[n].grad) for n in names]

    decay = [P[n] for n, s in param_list() if len(s) == 2]
    no_decay = [P[n] for n, s in param_list() if len(s) != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        logits = forward(P, tokens)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1),
                                                 ignore_index=-1)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(list(P.values()), CLIP).item())
        losses.append(loss.item())
        opt.step()
    blobs.append(struct.pack(f"<{STEPS}f", *losses) + struct.pack(f"<{STEPS}f", *norms))
    blobs += [f32(P[n]) for n in names]
    with open(out_path, "wb") as f:
        f.write(b"".join(blobs))
    print(f"{out_path}: loss {losses[0]:.6f} -> {losses[-1]:.6f}, grad norms "
          + ", ".join(f"{n:.4f}" for n in norms))


if __name__ == "__main__":
    main()
