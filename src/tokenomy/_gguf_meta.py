"""ModelSpec from a GGUF file's metadata (memory-mapped; no weights are read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenomy.errors import ModelSpecError
from tokenomy.modelspec import Attention, ModelSpec, MoE


def read_gguf_metadata(path: Path) -> tuple[dict[str, Any], set[str]]:
    """(metadata key -> value, tensor names) of a GGUF file."""
    if not path.is_file():
        raise ModelSpecError(f"no GGUF file at {path}.")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ModelSpecError(f"{path} is not a readable GGUF file ({e}).") from e
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key != "tokenizer.ggml.tokens":
            continue  # large arrays we do not need
        if key == "tokenizer.ggml.tokens":
            meta[key] = len(field.data)
            continue
        meta[key] = field.contents()
    return meta, {t.name for t in reader.tensors}


def spec_from_gguf(path: Path) -> ModelSpec:
    meta, tensors = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if not arch:
        raise ModelSpecError(f"{path}: GGUF metadata has no general.architecture.")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer arrays (e.g. OpenELM): take the first
            value = value[0] if value else default
        return value

    hidden, layers = get("embedding_length"), get("block_count")
    heads = get("attention.head_count")
    if not (hidden and layers and heads):
        raise ModelSpecError(
            f"{path}: GGUF metadata lacks {arch}.embedding_length / block_count / "
            "attention.head_count; tokenomy reads decoder-only transformer GGUFs."
        )
    vocab = get("vocab_size") or meta.get("tokenizer.ggml.tokens")
    kv_lora = get("attention.kv_lora_rank")
    if kv_lora:
        rope = get("rope.dimension_count")
        key_len = get("attention.key_length")
        attention = Attention(
            kind="mla",
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=key_len,
            q_lora_rank=get("attention.q_lora_rank") or None,
            kv_lora_rank=kv_lora,
            qk_nope_head_dim=key_len - rope,
            qk_rope_head_dim=rope,
            v_head_dim=get("attention.value_length"),
        )
    else:
        window = get("attention.sliding_window")
        attention = Attention(
            num_heads=heads,
            num_kv_heads=get("attention.head_count_kv", heads),
            head_dim=get("attention.key_length", hidden // heads),
            qkv_bias="blk.0.attn_q.bias" in tensors,
            sliding_window=window,
            full_attention_every=6 if (window and arch.startswith("gemma3")) else 1,
        )
    moe = None
    if (get("expert_count") or 0) > 1:
        moe = MoE(
            num_experts=get("expert_count"),
            experts_per_token=get("expert_used_count"),
            expert_intermediate_size=get("expert_feed_forward_length")
            or get("feed_forward_length"),
            shared_experts=get("expert_shared_count", 0),
            first_dense_layers=get("leading_dense_block_count", 0),
        )
    name = meta.get("general.name") or path.stem
    try:
        return ModelSpec(
            name=str(name),
            hidden_size=hidden,
            num_layers=layers,
            intermediate_size=get("feed_forward_length") or 4 * hidden,
            ffn_matrices=3 if "blk.0.ffn_gate.weight" in tensors or moe else 2,
            vocab_size=vocab,
            tie_embeddings="output.weight" not in tensors,
            max_context=get("context_length", 4096),
            attention=attention,
            moe=moe,
            origin=str(path),
        )
    except ValueError as e:
        raise ModelSpecError(f"{path}: inconsistent architecture in GGUF metadata: {e}") from e
