#!/usr/bin/python3
"""hf_check.py - loads a model folder with Hugging Face transformers
(AutoModelForCausalLM.from_pretrained, in float32) and prints, as one JSON
line, the mean loss over a file's non-overlapping windows of T tokens (what
`strata eval --data FILE --seq T` computes) and the greedy continuation of a
prompt (what `strata generate --temperature 0` prints). tools/hf_check.sh
compares them.

usage: hf_check.py MODEL_DIR FILE T PROMPT N
Needs python3-torch and the transformers and safetensors packages (pip).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, path, T, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    cfg = model.config
    positions = getattr(cfg, "n_positions", None) or cfg.max_position_embeddings
    data = torch.tensor(list(open(path, "rb").read()), dtype=torch.long)
    windows = (len(data) - 1) // T
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = data[w * T:(w + 1) * T + 1]
            logits = model(x[None, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, x[1:], reduction="sum").item()
            count += T
        ids = torch.tensor([list(prompt.encode())])
        for _ in range(n):
            if ids.shape[1] >= positions:
                break
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    text = bytes(ids[0].tolist()).decode("latin-1")
    print(json.dumps({"loss": total / count, "tokens": count, "text": text}))


if __name__ == "__main__":
    main()
