#!/usr/bin/python3
"""llama_cpp_gguf.py - a Strata (Hugging Face layout) Llama folder with byte tokens as a GGUF
file in f32, for llama.cpp to run the same weights as a peer in benchmarks.

usage: PYTHONPATH=<llama.cpp>/gguf-py /usr/bin/python3 tools/llama_cpp_gguf.py MODEL_DIR OUT.gguf

The vocabulary is 256 byte tokens (Strata's byte-level models): llama.cpp's SentencePiece
vocabulary with every token of type BYTE. Query and key rows are reordered from the
rotate-half layout of Hugging Face's rotary embedding to the pairwise layout llama.cpp's
"llama" architecture expects, as llama.cpp's own converter does for such checkpoints.
"""
import json
import os
import struct
import sys

import numpy as np
import gguf


def tensors(folder):
    """Name -> float32 array of the folder's single safetensors shard."""
    index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    out = {}
    for shard in shards:
        with open(os.path.join(folder, shard), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] != "F32":
                sys.exit(f"{name}: {meta['dtype']}, this script reads F32 only")
            a, b = meta["data_offsets"]
            out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(meta["shape"])
    return out


def pairwise(w, heads):
    """Rows of each head from halves (x0..x{d/2-1}, y0..) to pairs (x0, y0, x1, y1, ...)."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def main():
    folder, out_path = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(folder, "config.json")))
    if cfg.get("model_type") != "llama" or cfg["vocab_size"] != 256:
        sys.exit("a Llama with the 256 byte tokens only")
    t = tensors(folder)
    L, H, KV = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(out_path, "llama")
    w.add_name(os.path.basename(os.path.abspath(folder)))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(cfg["hidden_size"] // H)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<0x{i:02X}>".encode() for i in range(256)])
    w.add_token_scores([0.0] * 256)
    w.add_token_types([gguf.TokenType.BYTE] * 256)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(L):
        for hf, gg in names.items():
            a = t[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                a = pairwise(a, H)
            elif gg == "attn_k":
                a = pairwise(a, KV)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(a))
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t.get("lm_head.weight", t["model.embed_tokens.weight"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
