#!/usr/bin/env python3
"""peft_adapter.py - LoRA adapters in PEFT's folder format for the adapter
tests, and the merged weights computed independently of Strata, in plain
Python (no torch, no numpy): W + (lora_alpha / r) * B @ A, transposed for
GPT-2's Conv1D weights (stored [in, out]).

usage:
  peft_adapter.py make MODEL_DIR ADAPTER_DIR R ALPHA SEED [bf16]
      a random adapter for every projection of MODEL_DIR's model (its
      safetensors in F32 or BF16), lora_A and lora_B both non-zero
  peft_adapter.py merge MODEL_DIR ADAPTER_DIR OUT_DIR [bf16]
      OUT_DIR/model.safetensors (F32, or BF16 rounded to nearest even) and
      config.json: the merged model
  peft_adapter.py compare A.safetensors B.safetensors TOL
      every tensor of A in B with the same shape, values within TOL
      (absolute plus relative), exit 1 naming the first that is not
  peft_adapter.py dtype FILE
      prints the dtypes of FILE's tensors
  peft_adapter.py bf16 MODEL_DIR OUT_DIR
      the model in BF16 (a published model's element type) with its config
"""
import json
import os
import random
import struct
import sys

TARGETS = {'llama': ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                     'down_proj'),
           'gpt2': ('c_attn', 'c_proj', 'c_fc')}


def read_st(path):
    with open(path, 'rb') as f:
        data = f.read()
    n = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == '__metadata__':
            continue
        a, b = e['data_offsets']
        raw = data[base + a:base + b]
        count = 1
        for d in e['shape']:
            count *= d
        if e['dtype'] == 'F32':
            vals = list(struct.unpack('<%df' % count, raw))
        elif e['dtype'] == 'BF16':
            vals = [struct.unpack('<f', struct.pack('<I', h << 16))[0]
                    for h in struct.unpack('<%dH' % count, raw)]
        else:
            raise SystemExit('%s: %s is %s' % (path, name, e['dtype']))
        out[name] = (e['dtype'], list(e['shape']), vals)
    return out


def bf16(x):
    u = struct.unpack('<I', struct.pack('<f', x))[0]
    u = (u + 0x7fff + ((u >> 16) & 1)) >> 16
    return u & 0xffff


def write_st(path, tensors):
    """tensors: name -> (dtype, shape, values), in order."""
    header, blobs, off = {'__metadata__': {'format': 'pt'}}, [], 0
    for name, (dtype, shape, vals) in tensors.items():
        if dtype == 'F32':
            raw = struct.pack('<%df' % len(vals), *vals)
        else:
            raw = struct.pack('<%dH' % len(vals), *[bf16(v) for v in vals])
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


def model_tensors(model_dir):
    """name -> tensor over the folder's safetensors files (any layout)."""
    out = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith('.safetensors') and not name.startswith('optimizer'):
            out.update(read_st(os.path.join(model_dir, name)))
    return out


def family(model_dir):
    with open(os.path.join(model_dir, 'config.json')) as f:
        t = json.load(f).get('model_type', 'gpt2')
    return 'gpt2' if t == 'gpt2' else 'llama'


def targets(model_dir, tensors):
    fam = family(model_dir)
    for name in sorted(tensors):
        parts = name.split('.')
        if len(parts) >= 2 and parts[-1] == 'weight' and parts[-2] in TARGETS[fam]:
            if len(tensors[name][1]) == 2:
                yield name, fam == 'gpt2'


def make(model_dir, adapter_dir, r, alpha, seed, dtype):
    rnd = random.Random(seed)
    tensors = model_tensors(model_dir)
    out, modules = {}, set()
    for name, in_out in targets(model_dir, tensors):
        d0, d1 = tensors[name][1]
        n_in, n_out = (d0, d1) if in_out else (d1, d0)
        mod = name[:-len('.weight')]
        modules.add(mod.split('.')[-1])
        out['base_model.model.%s.lora_A.weight' % mod] = (
            dtype, [r, n_in], [rnd.gauss(0, 0.2) for _ in range(r * n_in)])
        out['base_model.model.%s.lora_B.weight' % mod] = (
            dtype, [n_out, r], [rnd.gauss(0, 0.2) for _ in range(n_out * r)])
    os.makedirs(adapter_dir, exist_ok=True)
    write_st(os.path.join(adapter_dir, 'adapter_model.safetensors'), out)
    cfg = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': r, 'lora_alpha': alpha,
           'lora_dropout': 0.0, 'bias': 'none', 'target_modules': sorted(modules),
           'fan_in_fan_out': family(model_dir) == 'gpt2', 'use_rslora': False,
           'use_dora': False, 'modules_to_save': None, 'rank_pattern': {}, 'alpha_pattern': {},
           'base_model_name_or_path': os.path.abspath(model_dir), 'inference_mode': True}
    with open(os.path.join(adapter_dir, 'adapter_config.json'), 'w') as f:
        json.dump(cfg, f, indent=2)


def merge(model_dir, adapter_dir, out_dir, dtype):
    tensors = model_tensors(model_dir)
    ad = read_st(os.path.join(adapter_dir, 'adapter_model.safetensors'))
    with open(os.path.join(adapter_dir, 'adapter_config.json')) as f:
        cfg = json.load(f)
    scale = cfg['lora_alpha'] / cfg['r']
    r = cfg['r']
    merged = {}
    for name, (dt, shape, vals) in tensors.items():
        vals = list(vals)
        mod = name[:-len('.weight')] if name.endswith('.weight') else None
        ka, kb = 'base_model.model.%s.lora_A.weight' % mod, 'base_model.model.%s.lora_B.weight' % mod
        if mod and ka in ad:
            A, B = ad[ka][2], ad[kb][2]
            n_in, n_out = ad[ka][1][1], ad[kb][1][0]
            in_out = family(model_dir) == 'gpt2'
            for o in range(n_out):
                row = [0.0] * n_in
                for k in range(r):
                    b = B[o * r + k]
                    for i in range(n_in):
                        row[i] = f32(row[i] + f32(b * A[k * n_in + i]))
                for i in range(n_in):
                    at = i * n_out + o if in_out else o * n_in + i
                    vals[at] = f32(vals[at] + f32(row[i] * scale))
        merged[name] = (dtype, shape, vals)
    os.makedirs(out_dir, exist_ok=True)
    write_st(os.path.join(out_dir, 'model.safetensors'), merged)
    with open(os.path.join(model_dir, 'config.json')) as f, \
            open(os.path.join(out_dir, 'config.json'), 'w') as g:
        g.write(f.read())


def compare(a, b, tol):
    x, y = read_st(a), read_st(b)
    for name, (_, shape, vals) in x.items():
        if name not in y or y[name][1] != shape:
            print('%s: %s missing or of another shape in %s' % (a, name, b))
            return 1
        for i, (u, v) in enumerate(zip(vals, y[name][2])):
            if abs(u - v) > tol * (1 + abs(u)):
                print('%s[%d]: %r against %r' % (name, i, u, v))
                return 1
    return 0


def main():
    cmd = sys.argv[1]
    if cmd == 'make':
        make(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]),
             'BF16' if sys.argv[7:] == ['bf16'] else 'F32')
    elif cmd == 'merge':
        merge(sys.argv[2], sys.argv[3], sys.argv[4], 'BF16' if sys.argv[5:] == ['bf16'] else 'F32')
    elif cmd == 'compare':
        sys.exit(compare(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    elif cmd == 'bf16':
        os.makedirs(sys.argv[3], exist_ok=True)
        write_st(os.path.join(sys.argv[3], 'model.safetensors'),
                 {n: ('BF16', t[1], t[2]) for n, t in model_tensors(sys.argv[2]).items()})
        with open(os.path.join(sys.argv[2], 'config.json')) as f, \
                open(os.path.join(sys.argv[3], 'config.json'), 'w') as g:
            g.write(f.read())
    elif cmd == 'dtype':
        print(' '.join(sorted({t[0] for t in read_st(sys.argv[2]).values()})))
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
