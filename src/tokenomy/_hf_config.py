"""ModelSpec from a Hugging Face ``config.json`` (Llama, Mistral, Mixtral, Qwen2/3(-MoE),
Gemma 2/3, Llama 4, DeepSeek-V2/V3, gpt-oss, Phi-3 and their look-alikes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenomy.errors import ModelSpecError
from tokenomy.modelspec import Attention, ModelSpec, MoE, Vision, load_config_json

# Config keys that wrap the language model of a multimodal checkpoint.
_TEXT_KEYS = ("text_config", "llm_config", "language_config")


def _first(cfg: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def _attention(cfg: dict, hidden: int) -> Attention:
    heads = _first(cfg, "num_attention_heads", "n_head")
    if heads is None:
        raise ModelSpecError("config.json has no num_attention_heads; is it a decoder LLM?")
    if cfg.get("kv_lora_rank"):
        return Attention(
            kind="mla",
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
            q_lora_rank=cfg.get("q_lora_rank"),
            kv_lora_rank=cfg["kv_lora_rank"],
            qk_nope_head_dim=cfg["qk_nope_head_dim"],
            qk_rope_head_dim=cfg["qk_rope_head_dim"],
            v_head_dim=cfg["v_head_dim"],
        )
    window, every = cfg.get("sliding_window"), 1
    layer_types = cfg.get("layer_types")
    if layer_types and "full_attention" in layer_types and window:
        every = layer_types.index("full_attention") + 1
    elif cfg.get("sliding_window_pattern") and window:
        every = cfg["sliding_window_pattern"]
    elif not cfg.get("use_sliding_window", True) or cfg.get("model_type", "").startswith("qwen"):
        window = None  # Qwen configs carry a window they do not use by default
    return Attention(
        num_heads=heads,
        num_kv_heads=_first(cfg, "num_key_value_heads", default=heads),
        head_dim=_first(cfg, "head_dim", default=hidden // heads),
        qkv_bias=bool(_first(cfg, "attention_bias", "qkv_bias", default=False)),
        sliding_window=window,
        full_attention_every=every,
    )


def _moe(cfg: dict) -> MoE | None:
    experts = _first(cfg, "num_local_experts", "n_routed_experts", "num_experts")
    if not experts or experts <= 1:
        return None
    shared = _first(cfg, "n_shared_experts", default=0)
    shared_size = cfg.get("shared_expert_intermediate_size")
    if shared_size and not shared:
        shared = 1  # Qwen2-MoE: one shared expert of its own width
    if cfg.get("model_type", "").startswith("llama4"):
        shared = 1
    return MoE(
        num_experts=experts,
        experts_per_token=_first(cfg, "num_experts_per_tok", "num_experts_per_token", "top_k"),
        expert_intermediate_size=_first(
            cfg, "moe_intermediate_size", "expert_intermediate_size", "intermediate_size"
        ),
        shared_experts=shared,
        shared_expert_intermediate_size=shared_size,
        first_dense_layers=_first(cfg, "first_k_dense_replace", default=0),
        layer_step=_first(cfg, "interleave_moe_layer_step", "decoder_sparse_step", default=1),
    )


def _vision(cfg: dict) -> Vision | None:
    v = cfg.get("vision_config")
    if not isinstance(v, dict) or not v.get("hidden_size"):
        return None
    return Vision(
        num_layers=_first(v, "num_hidden_layers", "depth", default=0),
        hidden_size=v["hidden_size"],
        intermediate_size=_first(v, "intermediate_size", default=4 * v["hidden_size"]),
    )


def spec_from_config_dict(cfg: dict, name: str, origin: str) -> ModelSpec:
    top = cfg
    for key in _TEXT_KEYS:
        if isinstance(cfg.get(key), dict):
            cfg = {**cfg[key], "model_type": cfg[key].get("model_type", top.get("model_type"))}
            break
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _first(cfg, "vocab_size", default=top.get("vocab_size"))
    if not (hidden and layers and vocab):
        raise ModelSpecError(
            f"{origin}: config lacks hidden_size / num_hidden_layers / vocab_size; "
            "tokenomy reads decoder-only transformer configs."
        )
    inter = _first(cfg, "intermediate_size", "intermediate_size_mlp", "n_inner", "ffn_dim")
    if cfg.get("intermediate_size_mlp"):  # Llama 4: dense layers use the wider MLP
        inter = cfg["intermediate_size_mlp"]
    plain_mlp = cfg.get("model_type") in {"gpt2", "gpt_neox", "opt", "falcon", "phi"}
    try:
        return ModelSpec(
            name=name,
            hidden_size=hidden,
            num_layers=layers,
            intermediate_size=inter or 4 * hidden,
            ffn_matrices=2 if plain_mlp else 3,
            vocab_size=vocab,
            tie_embeddings=bool(_first(cfg, "tie_word_embeddings", default=top.get(
                "tie_word_embeddings", False))),
            max_context=_first(cfg, "max_position_embeddings", "n_positions", default=4096),
            attention=_attention(cfg, hidden),
            moe=_moe(cfg),
            vision=_vision(top),
            origin=origin,
        )
    except ValueError as e:
        raise ModelSpecError(f"{origin}: inconsistent architecture: {e}") from e


def spec_from_hf_config(path: Path) -> ModelSpec:
    cfg = load_config_json(path)
    directory = path if path.is_dir() else path.parent
    return spec_from_config_dict(cfg, name=directory.name, origin=str(path))
