#!/usr/bin/python3
"""llama_reference.py - golden data for Strata's Llama family from Hugging Face
transformers: a tiny LlamaForCausalLM (grouped-query attention, an untied
head, Llama 3's rotary scaling) and a tiny Qwen2ForCausalLM (q/k/v biases, a
tied head), random weights, one file each that tests/test_llama.c loads and
matches: logits, loss, every gradient, five AdamW steps with global-norm
clipping (torch.optim.AdamW, clip_grad_norm_), and the logits of decoding the
first sequence token by token with the model's KV cache.

Usage: PYTHONPATH=DIR /usr/bin/python3 tools/llama_reference.py tests/data
Needs Debian's python3-torch and transformers with safetensors in DIR:
  pip install --target DIR transformers==4.44.2 safetensors   (then remove DIR/numpy*)

File layout (little-endian):
  char[8]  "STRATALR"; u32 version (1)
  u32 n, char[n]    the model's config.json as transformers writes it
  i32 x 3  B, T, steps
  f32 x 5  lr, beta1, beta2, adam_eps, weight_decay; f32 clip
  i32 [B*T] tokens, i32 [B*T] targets (-1: no loss)
  u32 count; per parameter: u32 n, char[n] name, u32 ndim, u32 shape[ndim], f32 values
  f32 [B*T, V] logits; f32 loss; f32 gradients in the parameters' order
  f32 [steps] loss before each step; f32 [steps] gradient norm before clipping
  f32 parameters after the steps, in the same order
  f32 [T, V] logits of sequence 0 decoded one token at a time with the KV cache
"""
import json
import os
import struct
import sys

import torch
from transformers import (DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

B, T, STEPS = 3, 10, 5
LR, BETA1, BETA2, ADAM_EPS, WD, CLIP = 1e-2, 0.9, 0.95, 1e-8, 0.1, 1.0

MODELS = {
    "llama_reference.bin": (LlamaForCausalLM, LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    "qwen2_reference.bin": (Qwen2ForCausalLM, Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False)),
}


def f32(t):
    return t.detach().contiguous().float().numpy().tobytes()


def write(path, cls, config):
    gen = torch.Generator().manual_seed(4321)
    model = cls(config).float()
    params = list(model.named_parameters())  # a tied head appears once, as the embedding
    with torch.no_grad():
        for name, p in params:
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    V = config.vocab_size
    tokens = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, :3] = -1  # rows without a target are left out of the mean
    targets[2, 7] = -1

    blobs = [b"STRATALR" + struct.pack("<I", 1)]
    cfg_text = config.to_json_string().encode()
    blobs.append(struct.pack("<I", len(cfg_text)) + cfg_text)
    blobs.append(struct.pack("<3i", B, T, STEPS))
    blobs.append(struct.pack("<6f", LR, BETA1, BETA2, ADAM_EPS, WD, CLIP))
    blobs.append(tokens.int().numpy().tobytes() + targets.int().numpy().tobytes())
    blobs.append(struct.pack("<I", len(params)))
    for name, p in params:
        blobs.append(struct.pack("<I", len(name)) + name.encode())
        blobs.append(struct.pack("<I", p.dim()) + struct.pack(f"<{p.dim()}I", *p.shape))
        blobs.append(f32(p))

    def loss_of(logits):
        return torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1),
                                                 ignore_index=-1)

    logits = model(tokens, use_cache=False).logits
    loss = loss_of(logits)
    loss.backward()
    blobs.append(f32(logits) + struct.pack("<f", loss.item()))
    blobs += [f32(p.grad) for _, p in params]

    decay = [p for _, p in params if p.dim() == 2]
    no_decay = [p for _, p in params if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_of(model(tokens, use_cache=False).logits)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_([p for _, p in params], CLIP).item())
        losses.append(loss.item())
        opt.step()
    blobs.append(struct.pack(f"<{STEPS}f", *losses) + struct.pack(f"<{STEPS}f", *norms))
    blobs += [f32(p) for _, p in params]

    # Sequence 0, one token at a time through the KV cache, with the final
    # weights (in training mode the model does not return its cache).
    model.eval()
    with torch.no_grad():
        past, steps = DynamicCache(), []
        for t in range(T):
            out = model(tokens[:1, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits[0, -1])
        blobs.append(f32(torch.stack(steps)))
    with open(path, "wb") as f:
        f.write(b"".join(blobs))
    print(f"{path}: loss {losses[0]:.6f} -> {losses[-1]:.6f}, grad norms "
          + ", ".join(f"{n:.4f}" for n in norms))


def main():
    out_dir = sys.argv[1]
    torch.manual_seed(0)
    for name, (cls, config) in MODELS.items():
        write(os.path.join(out_dir, name), cls, config)


if __name__ == "__main__":
    main()
