"""ModelSpec: a model's architecture, from which parameter counts, weight bytes and
KV-cache bytes are computed (never stored).

Three sources give the same object: a catalog entry (``catalog/models.yaml``), a
Hugging Face ``config.json`` (or the directory holding it), and a GGUF file's metadata.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenomy.errors import ModelSpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Attention(_Strict):
    """Attention geometry. ``kind='mla'`` is DeepSeek's multi-head latent attention."""

    kind: Literal["gqa", "mla"] = "gqa"
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    qkv_bias: bool = False
    # Sliding-window layers keep at most `sliding_window` tokens of KV cache; every
    # `full_attention_every`-th layer attends to the whole context (Gemma 3: 6, gpt-oss: 2).
    sliding_window: int | None = None
    full_attention_every: int = 1
    # MLA only (DeepSeek-V2/V3 config names).
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Attention:
        if self.kind == "mla":
            need = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
            missing = [n for n in need if getattr(self, n) is None]
            if missing:
                raise ValueError(f"MLA attention needs {', '.join(missing)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                f"{self.num_kv_heads}"
            )
        return self


class MoE(_Strict):
    """Mixture of experts: which layers route, to how many of how many experts."""

    num_experts: int = Field(gt=1)
    experts_per_token: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)
    shared_experts: int = 0
    shared_expert_intermediate_size: int | None = None
    first_dense_layers: int = 0  # DeepSeek's first_k_dense_replace
    layer_step: int = 1  # every layer_step-th layer is MoE (Llama-4 Maverick: 2)

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_dense_layers and (i + 1) % self.layer_step == 0

    @property
    def shared_size(self) -> int:
        return self.shared_expert_intermediate_size or self.expert_intermediate_size


class Vision(_Strict):
    """A ViT-style vision tower (kept in 16 bit by every scheme)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    extra_params: float = 0  # projector / patch embedding, as published

    @property
    def params(self) -> float:
        h, i = self.hidden_size, self.intermediate_size
        return self.num_layers * (4 * h * h + 2 * h * i) + self.extra_params


class ParamCounts(_Strict):
    """Parameters by how schemes treat them. ``linear`` is what quantizers quantize."""

    linear: float  # attention projections, dense FFN, experts
    embedding: float
    lm_head: float  # 0 when tied to the embedding
    other: float  # norms, biases, MoE routers, vision tower: stay in 16 bit
    expert_linear: float  # the part of `linear` that lives in routed experts

    @property
    def total(self) -> float:
        return self.linear + self.embedding + self.lm_head + self.other


class ModelSpec(_Strict):
    """Architecture fields of a transformer decoder; everything else is computed."""

    name: str
    hf_id: str | None = None
    aliases: list[str] = []
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)  # dense FFN width
    ffn_matrices: Literal[2, 3] = 3  # 3 = gated (SwiGLU/GeGLU), 2 = plain MLP
    vocab_size: int = Field(gt=0)
    tie_embeddings: bool = False
    max_context: int = Field(gt=0)
    attention: Attention
    moe: MoE | None = None
    vision: Vision | None = None
    training_tokens: float | None = None
    published_params: float | None = None
    published_active_params: float | None = None
    source: str | None = None
    as_of: str | None = None
    origin: str = "catalog"  # catalog | config.json path | gguf path

    # -- parameter counts -------------------------------------------------------------

    def _attention_params(self) -> tuple[float, float]:
        """(linear, other) parameters of one attention block."""
        a, h = self.attention, self.hidden_size
        if a.kind == "mla":
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            if a.q_lora_rank:
                q = h * a.q_lora_rank + a.q_lora_rank * a.num_heads * qk
                norms = a.q_lora_rank
            else:
                q, norms = h * a.num_heads * qk, 0
            kv = h * (a.kv_lora_rank + a.qk_rope_head_dim)
            kv += a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim)
            o = a.num_heads * a.v_head_dim * h
            return q + kv + o, norms + a.kv_lora_rank
        q_dim, kv_dim = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        bias = (q_dim + 2 * kv_dim) if a.qkv_bias else 0
        return h * q_dim + 2 * h * kv_dim + q_dim * h, bias

    def _ffn(self, width: int) -> float:
        return self.ffn_matrices * self.hidden_size * width

    @property
    def num_moe_layers(self) -> int:
        if self.moe is None:
            return 0
        return sum(self.moe.is_moe_layer(i) for i in range(self.num_layers))

    @property
    def params(self) -> ParamCounts:
        attn_linear, attn_other = self._attention_params()
        n_moe = self.num_moe_layers
        n_dense = self.num_layers - n_moe
        linear = self.num_layers * attn_linear + n_dense * self._ffn(self.intermediate_size)
        expert_linear, router = 0.0, 0.0
        if self.moe:
            m = self.moe
            expert_linear = n_moe * m.num_experts * self._ffn(m.expert_intermediate_size)
            linear += expert_linear + n_moe * m.shared_experts * self._ffn(m.shared_size)
            router = n_moe * m.num_experts * self.hidden_size
        embedding = self.vocab_size * self.hidden_size
        norms = self.num_layers * (2 * self.hidden_size + attn_other) + self.hidden_size
        vision = self.vision.params if self.vision else 0
        return ParamCounts(
            linear=linear,
            embedding=embedding,
            lm_head=0 if self.tie_embeddings else embedding,
            other=norms + router + vision,
            expert_linear=expert_linear,
        )

    @property
    def total_params(self) -> float:
        return self.params.total

    @property
    def active_linear_params(self) -> float:
        """Linear parameters one token multiplies through (routed experts: only its top-k)."""
        p = self.params
        if not self.moe:
            return p.linear
        return p.linear - p.expert_linear * (1 - self.moe.experts_per_token / self.moe.num_experts)

    @property
    def active_params(self) -> float:
        """Active parameters per token, counted as model cards do (embeddings included)."""
        p = self.params
        vision = self.vision.params if self.vision else 0
        return self.active_linear_params + p.embedding + p.lm_head + p.other - vision

    @property
    def matmul_params_per_token(self) -> float:
        """Parameters in matrix multiplies per token: FLOPs/token = 2 x this (+ attention)."""
        return self.active_linear_params + self.vocab_size * self.hidden_size

    @property
    def tokens_per_param(self) -> float | None:
        if not self.training_tokens:
            return None
        return self.training_tokens / self.total_params

    # -- attention / KV cache ---------------------------------------------------------

    def _layers_by_window(self) -> tuple[int, int]:
        """(full-attention layers, sliding-window layers)."""
        a = self.attention
        if not a.sliding_window:
            return self.num_layers, 0
        full = sum((i + 1) % a.full_attention_every == 0 for i in range(self.num_layers))
        return full, self.num_layers - full

    def kv_elements_per_layer_token(self, tp: int = 1) -> float:
        """KV-cache elements one layer stores per token on one of `tp` GPUs.

        GQA splits KV heads over TP ranks and replicates them when TP exceeds the KV
        head count (vLLM's rule); MLA caches one latent vector, replicated on every rank.
        """
        a = self.attention
        if a.kind == "mla":
            return a.kv_lora_rank + a.qk_rope_head_dim
        return 2 * math.ceil(a.num_kv_heads / tp) * a.head_dim

    def kv_elements(self, context: int, tp: int = 1) -> float:
        """KV-cache elements of one sequence of `context` tokens on one of `tp` GPUs."""
        full, windowed = self._layers_by_window()
        window = min(context, self.attention.sliding_window or context)
        return self.kv_elements_per_layer_token(tp) * (full * context + windowed * window)

    def attention_flops(self, query_tokens: int, context: int) -> float:
        """FLOPs of QK^T and AV for `query_tokens` attending to `context` tokens each."""
        a = self.attention
        full, windowed = self._layers_by_window()
        span = full * context + windowed * min(context, a.sliding_window or context)
        # absorbed MLA: scores over the latent + rope, values over the latent
        width = 2 * a.kv_lora_rank + a.qk_rope_head_dim if a.kind == "mla" else 2 * a.head_dim
        return 2 * a.num_heads * width * query_tokens * span

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, path: str | Path) -> ModelSpec:
        """Read a Hugging Face ``config.json`` (or a directory holding one)."""
        from tokenomy._hf_config import spec_from_hf_config

        return spec_from_hf_config(Path(path))

    @classmethod
    def from_gguf(cls, path: str | Path) -> ModelSpec:
        """Read a GGUF file's metadata (no weights are loaded)."""
        from tokenomy._gguf_meta import spec_from_gguf

        return spec_from_gguf(Path(path))


def load_config_json(path: Path) -> dict:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelSpecError(
            f"no config.json at {path}. Pass a Hugging Face model directory, its "
            "config.json, a .gguf file, or a catalog name (see `tokenomy catalog models`)."
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{file} is not valid JSON ({e}); fix or re-download it.") from e
