#!/usr/bin/python3
"""hf_make.py - a Hugging Face model folder for tools/hf_check.sh's other
direction: a small LlamaForCausalLM (grouped-query attention, untied head) or
Qwen2ForCausalLM (q/k/v biases, tied head) with random weights, written by
save_pretrained in bfloat16 and in shards of at most 100 KB (so the folder
has model.safetensors.index.json), the way published checkpoints come.

usage: hf_make.py llama|qwen2 DIR
Needs python3-torch and the transformers and safetensors packages (pip).
"""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM


def main():
    kind, out = sys.argv[1], sys.argv[2]
    sizes = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                 num_attention_heads=4, max_position_embeddings=64)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False,
                                             rope_theta=10000.0, **sizes))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=1, tie_word_embeddings=True,
                                             rope_theta=1000000.0, **sizes))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size="100KB", safe_serialization=True)


if __name__ == "__main__":
    main()
