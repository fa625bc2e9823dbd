"""Precision risk: an estimate of how much a scheme may hurt *this* model's quality.

Post-training quantization costs more quality the more tokens a model was trained on per
parameter (Kumar et al. 2024, "Scaling Laws for Precision", arXiv:2411.04330). llama.cpp
measured it: Q4_K_M KL divergence 0.013 on Llama-2-7B (2T tokens, ~300 tokens/param)
vs 0.031 on Llama-3-8B (15T tokens, ~1900 tokens/param)
(https://github.com/ggml-org/llama.cpp/pull/5076, /discussions/5962 perplexity tables).
Schemes at 8 bits and above are near-lossless for nearly all models; below 8 bits the
risk grows with tokens per parameter. This is an estimate to be confirmed by
measurement (`tokenomy eval`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tokenomy.catalog import Scheme
from tokenomy.modelspec import ModelSpec

Level = Literal["low", "moderate", "high"]

# Tokens per parameter above which sub-8-bit schemes are flagged high risk: Llama-3-8B
# (~1900) already loses ~2.4x the KLD of Llama-2-7B (~300) at Q4_K_M.
HIGH_TOKENS_PER_PARAM = 1000
SMALL_MODEL_PARAMS = 1e9  # small models have no redundancy to spare at 4 bits


class PrecisionRisk(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: Level
    tokens_per_param: float | None
    reason: str


def precision_risk(spec: ModelSpec, scheme: Scheme) -> PrecisionRisk:
    tpp = spec.tokens_per_param
    if not scheme.below_8_bits:
        return PrecisionRisk(
            level="low",
            tokens_per_param=tpp,
            reason=f"{scheme.weight_bits:g}-bit weights are near-lossless for most models",
        )
    seen = f"trained on {tpp:,.0f} tokens/param" if tpp else "training tokens unpublished"
    if spec.total_params < SMALL_MODEL_PARAMS:
        return PrecisionRisk(
            level="high", tokens_per_param=tpp,
            reason=f"small model ({spec.total_params / 1e6:,.0f}M params, {seen}): "
            f"{scheme.weight_bits:g}-bit weights often hurt; measure with `tokenomy eval`",
        )
    if tpp is not None and tpp >= HIGH_TOKENS_PER_PARAM:
        return PrecisionRisk(
            level="high", tokens_per_param=tpp,
            reason=f"{seen} (>= {HIGH_TOKENS_PER_PARAM}): heavily trained models lose more "
            f"below 8 bits (Kumar et al. 2024); measure with `tokenomy eval`",
        )
    return PrecisionRisk(
        level="moderate", tokens_per_param=tpp,
        reason=f"{seen}: below 8 bits quality loss is model-specific; "
        "measure with `tokenomy eval`",
    )
