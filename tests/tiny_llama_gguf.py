"""A tiny Llama GGUF that llama.cpp and transformers both load: random weights in F32
(quantizable widths: multiples of 32), a byte-level BPE tokenizer trained on the spot
(tests/tiny.py), seconds to build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tiny import make_tokenizer

KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def tensor_shapes(hidden: int, ffn: int, heads: int, kv_heads: int) -> dict[str, tuple]:
    """[rows, cols] (numpy order) of each kind of block tensor."""
    kv = hidden // heads * kv_heads
    return {"attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden),
            "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden),
            "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}


def _tokenizer_fields(w) -> int:
    tok = make_tokenizer()
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    return len(vocab)


def write_llama_gguf(path: Path, hidden: int = 64, layers: int = 2, ffn: int = 128,
                     heads: int = 4, kv_heads: int = 2, seed: int = 0,
                     damage: str | None = None, std: float = 0.08, context: int = 512) -> Path:
    """`damage`: a tensor name whose weights get a few huge outliers (its block scales
    blow up, so any 4-bit type ruins it): the one a sensitivity estimate must rank first."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(layers)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = _tokenizer_fields(w)
    w.add_vocab_size(vocab)

    def weight(name: str, shape: tuple) -> np.ndarray:
        x = (rng.standard_normal(shape) * std).astype(np.float32)
        if name == damage:
            blocks = x.reshape(-1, 32)  # one outlier per 32-element block
            blocks[np.arange(len(blocks)), rng.integers(0, 32, len(blocks))] = 12 * std
        return x

    w.add_tensor("token_embd.weight", weight("token_embd.weight", (vocab, hidden)))
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        for kind, shape in tensor_shapes(hidden, ffn, heads, kv_heads).items():
            name = f"blk.{i}.{kind}.weight"
            w.add_tensor(name, weight(name, shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
