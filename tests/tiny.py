"""Tiny random-weight models built from a config, with a tokenizer trained on the spot:
no downloads, a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune,",
    "How do I serve a language model cheaply? Quantize it, batch requests, cache answers.",
    "1. Measure the quality. 2. Measure the speed. 3. Compute the cost per million tokens.",
    "The quick brown fox jumps over the lazy dog while the GPU bill keeps growing.",
] * 4


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def make_model_dir(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny Llama (random weights) and its tokenizer to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
        max_position_embeddings=8192, tie_word_embeddings=True, initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, n: int = 12) -> Path:
    """Conversations in the messages format, enough for both splits."""
    rows = []
    for i in range(n):
        rows.append({"id": f"conv-{i}", "messages": [
            {"role": "user", "content": TEXT[i % len(TEXT)]},
            {"role": "assistant", "content": " ".join(TEXT[(i + 1) % len(TEXT):][:3])},
        ]})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def write_tiny_gguf(path: Path) -> Path:
    """A tiny llama GGUF (metadata and two zero tensors, ~1.5 MB): hidden 256, 4 layers,
    FFN 512, 8 heads of 32, 2 KV heads, vocab 1000, embedding tied to the output."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_block_count, 4), (w.add_embedding_length, 256),
                       (w.add_feed_forward_length, 512), (w.add_head_count, 8),
                       (w.add_head_count_kv, 2), (w.add_context_length, 2048),
                       (w.add_vocab_size, 1000)):
        add(value)
    w.add_tensor("token_embd.weight", np.zeros((1000, 256), dtype=np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", np.zeros((512, 256), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits_of(path):
    """A checkpoint reloaded in plain transformers: its logits over 32 fixed tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        logits = model(torch.arange(1, 33).unsqueeze(0)).logits.float()  # [1, 32, V]
    assert torch.isfinite(logits).all(), f"{path}: NaN/inf logits"
    return logits
