#!/usr/bin/python3
"""finetune_check.py - the Hugging Face side of tools/finetune_check.sh: a
published-style model folder, a PEFT adapter, and losses computed with
transformers and peft, the independent reference for Strata's --init,
--adapter and merge.

usage:
  finetune_check.py make DIR TEXT
      DIR/base: a LlamaForCausalLM (8 layers x 512, 8 heads, 2 key/value
      heads) with drawn weights, saved by save_pretrained in bfloat16 in
      several shards, with a byte-level BPE tokenizer trained on TEXT by the
      `tokenizers` library (tokenizer.json, tokenizer_config.json: BOS, EOS);
      DIR/adapter: a PEFT LoRA adapter (r 8, alpha 16, every projection)
      with drawn lora_A and lora_B, saved by peft
  finetune_check.py example-loss DIR TEXT_LINE
      the loss of [tokens of the line with BOS] + [EOS] (one sequence, the
      mean over its predictions), the base model in float32
  finetune_check.py eval MODEL [ADAPTER] TEXT T
      the loss over TEXT's tokens (BOS first) in windows of T + 1 tokens one
      after another (as `strata eval --seq T`): the model in float32, with
      the adapter through peft when given
  finetune_check.py eval-bf16 MODEL TEXT T
      the same with the model computing in bfloat16 (weights and
      activations, as transformers runs a published bf16 model)
  finetune_check.py greedy-bf16 MODEL N PROMPT...
      N greedy tokens after each prompt's tokens (BOS first), the model in
      bfloat16: a JSON line per prompt (ids, text)
  finetune_check.py jsonl-loss MODEL FILE T
      the mean loss over a JSON Lines file's targets, each example a
      sequence of its own (as `strata eval --seq T --pack off` lays them;
      packed rows must give the same)
  finetune_check.py peft-merge BASE ADAPTER OUT
      peft's merge_and_unload, saved in bfloat16: for comparing with
      `strata merge`
Prints JSON. Needs python3-torch and, on PYTHONPATH, transformers, peft,
tokenizers and safetensors (tools/finetune_check.sh installs them).
"""
import json
import os
import sys

import torch


def tokenizer_from(text_path, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=['<s>', '</s>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([text_path], trainer)
    bos, eos = tok.token_to_id('<s>'), tok.token_to_id('</s>')
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', bos)])
    tok.save(os.path.join(out_dir, 'tokenizer.json'))
    with open(os.path.join(out_dir, 'tokenizer_config.json'), 'w') as f:
        json.dump({'bos_token': '<s>', 'eos_token': '</s>',
                   'tokenizer_class': 'PreTrainedTokenizerFast'}, f)
    return tok, bos, eos


def make(out, text_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    base = os.path.join(out, 'base')
    os.makedirs(base, exist_ok=True)
    tok, bos, eos = tokenizer_from(text_path, base)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=512, intermediate_size=1376,
                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                      max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=bos, eos_token_id=eos)
    torch.manual_seed(5)
    model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16).save_pretrained(base, max_shard_size='20MB', safe_serialization=True)
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias='none', task_type='CAUSAL_LM',
                      target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj',
                                      'up_proj', 'down_proj'])
    pm = get_peft_model(model, lcfg)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if 'lora_A' in name or 'lora_B' in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    pm.save_pretrained(os.path.join(out, 'adapter'))
    print(json.dumps({'vocab': tok.get_vocab_size(), 'bos': bos, 'eos': eos,
                      'params': sum(p.numel() for p in model.parameters())}))


def load(model_dir, adapter=None, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def tokenize(model_dir, text):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(model_dir, 'tokenizer.json')).encode(text).ids


def example_loss(model_dir, line):
    with open(os.path.join(model_dir, 'tokenizer_config.json')) as f:
        eos_tok = json.load(f)['eos_token']
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(os.path.join(model_dir, 'tokenizer.json'))
    ids = t.encode(line).ids + [t.token_to_id(eos_tok)]
    model = load(model_dir)
    x = torch.tensor([ids])
    with torch.no_grad():
        loss = model(input_ids=x, labels=x).loss.item()
    print(json.dumps({'loss': loss, 'tokens': len(ids)}))


def jsonl_loss(model_dir, path, T):
    # Each example alone, as Strata's JSON Lines rows hold it: the prompt
    # (or text) with the template's BOS, the completion without, then the
    # EOS; the loss on the completion's tokens and the EOS (a text's all),
    # cut after T + 1 tokens; the mean over every example's targets.
    with open(os.path.join(model_dir, 'tokenizer_config.json')) as f:
        eos_tok = json.load(f)['eos_token']
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(os.path.join(model_dir, 'tokenizer.json'))
    eos = t.token_to_id(eos_tok)
    model = load(model_dir)
    total, count = 0.0, 0
    with open(path, encoding='utf-8') as f, torch.no_grad():
        for line in f:
            if not line.strip():
                continue
            ex = json.loads(line)
            if 'text' in ex:
                ids = t.encode(ex['text']).ids + [eos]
                labels = list(ids)
            else:
                p = t.encode(ex['prompt']).ids
                c = t.encode(ex['completion'], add_special_tokens=False).ids + [eos]
                ids, labels = p + c, [-100] * len(p) + c
            ids, labels = ids[:T + 1], labels[:T + 1]
            x = torch.tensor([ids[:-1]])
            y = torch.tensor(labels[1:])
            logits = model(input_ids=x).logits.float()[0]
            total += torch.nn.functional.cross_entropy(logits, y, ignore_index=-100,
                                                       reduction='sum').item()
            count += int((y != -100).sum())
    print(json.dumps({'loss': total / count, 'tokens': count}))


def eval_loss(model_dir, adapter, text_path, T, dtype=torch.float32):
    with open(text_path, encoding='utf-8') as f:
        ids = tokenize(model_dir, f.read())
    model = load(model_dir, adapter, dtype)
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range((len(ids) - 1) // T):
            w = torch.tensor([ids[k * T:k * T + T + 1]])
            logits = model(input_ids=w[:, :-1]).logits.float()
            total += torch.nn.functional.cross_entropy(logits[0], w[0, 1:], reduction='sum').item()
            count += T
    print(json.dumps({'loss': total / count, 'tokens': count}))


def greedy(model_dir, n, prompts, dtype):
    with open(os.path.join(model_dir, 'tokenizer_config.json')) as f:
        bos = json.load(f)['bos_token']
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(model_dir, 'tokenizer.json'))
    model = load(model_dir, None, dtype)
    with torch.no_grad():
        for p in prompts:
            ids = [tok.token_to_id(bos)] + tok.encode(p).ids
            out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            new = [int(i) for i in out[0, len(ids):]]
            print(json.dumps({'ids': new, 'text': tok.decode(new)}))


def peft_merge(base, adapter, out):
    import shutil
    model = load(base, adapter).merge_and_unload()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name in ('tokenizer.json', 'tokenizer_config.json'):
        shutil.copy(os.path.join(base, name), os.path.join(out, name))


def main():
    cmd = sys.argv[1]
    if cmd == 'make':
        make(sys.argv[2], sys.argv[3])
    elif cmd == 'example-loss':
        example_loss(sys.argv[2], sys.argv[3])
    elif cmd == 'eval':
        args = sys.argv[2:]
        adapter = args[1] if len(args) == 4 else None
        eval_loss(args[0], adapter, args[-2], int(args[-1]))
    elif cmd == 'eval-bf16':
        eval_loss(sys.argv[2], None, sys.argv[3], int(sys.argv[4]), torch.bfloat16)
    elif cmd == 'greedy-bf16':
        greedy(sys.argv[2], int(sys.argv[3]), sys.argv[4:], torch.bfloat16)
    elif cmd == 'jsonl-loss':
        jsonl_loss(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == 'peft-merge':
        peft_merge(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
