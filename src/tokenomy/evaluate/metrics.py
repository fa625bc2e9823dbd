"""Quality metrics of a candidate against its base, on the same tokens (numpy only).

KL divergence uses the base's top-k next-token probabilities plus one bucket for the
rest of the vocabulary: KL(P||Q) >= sum_topk p log(p/q) + p_rest log(p_rest/q_rest) by
the log-sum inequality, and with k=128 the bucket holds well under 1% of the mass, so
this is the exact KL to within rounding. Storing top-k instead of the full vocabulary
keeps the cached reference small (llama.cpp's --kl-divergence stores full logits).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

EPS = 1e-12


def log_softmax(logits: np.ndarray) -> np.ndarray:
    # logits: [T, V] -> log-probabilities [T, V], float64 for stable sums
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Reference:
    """What is kept of the base model on one window of tokens."""

    nll: np.ndarray  # [T] negative log-likelihood of each actual next token
    topk_ids: np.ndarray  # [T, k] int32
    topk_logp: np.ndarray  # [T, k] float32
    argmax: np.ndarray  # [T] int32


def reference_from_logp(logp: np.ndarray, targets: np.ndarray, k: int) -> Reference:
    # logp: [T, V] for positions predicting targets[t]; targets: [T]
    ids = np.argpartition(-logp, k, axis=-1)[:, :k].astype(np.int32)
    top = np.take_along_axis(logp, ids, axis=-1).astype(np.float32)
    return Reference(
        nll=-logp[np.arange(len(targets)), targets].astype(np.float64),
        topk_ids=ids,
        topk_logp=top,
        argmax=logp.argmax(axis=-1).astype(np.int32),
    )


@dataclass(frozen=True)
class TokenScores:
    nll: np.ndarray  # [T] candidate's NLL of the actual next tokens
    kld: np.ndarray  # [T] KL(base || candidate) per position
    top1_match: np.ndarray  # [T] bool


def compare(ref: Reference, logp: np.ndarray, targets: np.ndarray) -> TokenScores:
    # logp: [T, V] candidate log-probabilities on the same positions as `ref`
    p_top = np.exp(ref.topk_logp.astype(np.float64))  # [T, k]
    q_top_logp = np.take_along_axis(logp, ref.topk_ids, axis=-1)  # [T, k]
    q_top = np.exp(q_top_logp)
    kl = (p_top * (ref.topk_logp - q_top_logp)).sum(axis=-1)
    p_rest = np.clip(1 - p_top.sum(axis=-1), EPS, 1)
    q_rest = np.clip(1 - q_top.sum(axis=-1), EPS, 1)
    kl += p_rest * (np.log(p_rest) - np.log(q_rest))
    return TokenScores(
        nll=-logp[np.arange(len(targets)), targets],
        kld=np.maximum(kl, 0.0),
        top1_match=logp.argmax(axis=-1) == ref.argmax,
    )


def perplexity(nll: np.ndarray) -> float:
    return float(np.exp(np.mean(nll)))


# -- answers ------------------------------------------------------------------------


def answers_agree(base: list[int], cand: list[int], k: int) -> bool:
    """Identical for the first k tokens (or up to where the base stopped)."""
    n = min(k, len(base))
    return cand[:n] == base[:n]


def common_prefix(base: list[int], cand: list[int]) -> int:
    n = 0
    for a, b in zip(base, cand, strict=False):
        if a != b:
            break
        n += 1
    return n


def degenerate(text: str) -> bool:
    """An answer that says nothing: empty, whitespace or punctuation only (a model that
    emits 64 newlines is broken, not terse), or a repetition loop. With digits abstracted
    ('1. 2. 3.' -> '#. #. #.'): the answer compresses to almost nothing, ends in a short
    cycle repeated 4+ times, or repeats a whole line/sentence of 12+ characters."""
    if not re.search(r"\w", text):
        return True
    norm = re.sub(r"\d+", "#", text.strip())
    flat = re.sub(r"\s+", " ", norm)
    if len(flat) < 40:
        return False
    if len(zlib.compress(flat.encode())) / len(flat.encode()) < 0.25:
        return True
    for period in range(1, 21):
        cycle = flat[-period:]
        if cycle.strip() and flat.endswith(cycle * 4) and period * 4 >= 16:
            return True
    segments = [seg.strip().lower() for seg in re.split(r"\n+|(?<=[.!?])\s+", norm)]
    long = [seg for seg in segments if len(seg) >= 12]
    return len(long) != len(set(long))


VERDICTS = (
    # mean KLD upper bounds, from llama.cpp's KL-divergence tables
    # (github.com/ggml-org/llama.cpp/pull/5076): Q8_0 ~0.001, Q4_K_M ~0.01-0.03, Q2_K > 0.1
    (0.01, "near-lossless"),
    (0.1, "small loss"),
    (float("inf"), "noticeable loss"),
)


MIN_EXTRA_LOOPS = 2  # one extra looping answer in a handful of prompts is noise


def loops_beyond_noise(degenerate: int, base_degenerate: int, answers: int) -> bool:
    """More looping answers than the base by more than chance: at least MIN_EXTRA_LOOPS and
    over two standard deviations of a binomial count at the base's loop rate. Even a
    near-lossless quantization changes many greedy answers, and a changed answer loops at
    about the base's rate (seen: GGUF Q8_0, KLD 0.0035, 5/16 loops against the base's 3/16)."""
    n = max(answers, 1)
    rate = max(base_degenerate, 1) / n
    noise = 2 * math.sqrt(n * rate * (1 - rate))
    return degenerate - base_degenerate >= max(MIN_EXTRA_LOOPS, math.ceil(noise))


def verdict(kld_mean: float, degenerate: int, base_degenerate: int, answers: int) -> str:
    if loops_beyond_noise(degenerate, base_degenerate, answers):
        return "broken answers (repetition loops)"
    return next(label for bound, label in VERDICTS if kld_mean < bound)
