"""Confirm the estimate: quantize one tensor alone (its type's exact round trip, in
transformers), measure the KLD against the base on held-out windows, restore it."""

from __future__ import annotations

import numpy as np

from tokenomy.compress.auto import blocks
from tokenomy.compress.auto.table import Table


def spearman(a, b) -> float:
    """Rank correlation (ties broken by order; the estimates are continuous)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def pick(table: Table, qtype: str, n: int) -> list[str]:
    """The n/2 tensors estimated worst at `qtype` and n/2 spread over the rest, so the
    correlation spans the whole range."""
    ranked = [r.name for r in sorted(table.rows, key=lambda r: -r.kld.get(qtype, 0.0))]
    top = ranked[: n // 2 + n % 2]
    rest = ranked[len(top):]
    spread = [rest[int(i)] for i in np.linspace(0, len(rest) - 1, n // 2)] if rest else []
    return list(dict.fromkeys(top + spread))


def measure_swaps(source, names: list[str], qtype: str, importance: dict | None,
                  config, step=None) -> dict[str, float]:
    """Measured mean KLD with only `name` quantized to `qtype`, for each name."""
    import torch

    from tokenomy.compress.auto.stats import quantizable
    from tokenomy.evaluate import metrics
    from tokenomy.evaluate.reference import build_reference
    from tokenomy.evaluate.scorers import TransformersScorer
    from tokenomy.sources import materialize_hf

    step = step or (lambda _m: None)
    ref = build_reference(source, config, step)
    scorer = TransformersScorer(materialize_hf(source))
    params = quantizable(scorer.model)
    out = {}
    for i, name in enumerate(names):
        step(f"single swap {i + 1}/{len(names)}: {name} -> {qtype}")
        param = params[name]
        original = param.data.clone()
        imp = None if importance is None or qtype == "F16" else importance.get(name)
        swapped = blocks.round_trip(original.float().numpy(), qtype, imp)
        param.data = torch.from_numpy(swapped).to(original.dtype)
        try:
            klds = [metrics.compare(ref.window_refs[w], scorer.window_logp(window)
                                    [:, : ref.vocab_size], window[1:]).kld.mean()
                    for w, window in enumerate(ref.windows)]
        finally:
            param.data = original
        out[name] = float(np.mean(klds))
    return out
