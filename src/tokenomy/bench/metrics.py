"""From request timelines to a run's figures: latency percentiles, throughput, goodput,
and the machine time (hence $) per 1M input and output tokens.

Machine time is split between prompt and output tokens by the prefill ratio
rho = (time per prompt token) / (time per output token), measured at the lowest load:

    machine_s_per_1m_output = duration * 1e6 / (output_tokens + rho * input_tokens)
    machine_s_per_1m_input  = rho * machine_s_per_1m_output

so input_tokens * s_in + output_tokens * s_out = the run's duration, exactly.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from tokenomy.bench.client import RequestRecord
from tokenomy.bench.result import BenchRun, LatencyStats, TokenCounts

MAX_ERRORS = 5


def stats(values: list[float]) -> LatencyStats:
    if not values:
        return LatencyStats(n=0)
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyStats(n=len(a), mean=float(a.mean()), p50=float(p50), p90=float(p90),
                        p99=float(p99))


def prompt_tokens(rec: RequestRecord, counted: int) -> int:
    return rec.prompt_tokens if rec.prompt_tokens is not None else counted


def summarize(records: list[RequestRecord], duration_s: float, input_tokens: list[int], *,
              concurrency: int | None, rate: float | None, slo_ttft_s: float,
              slo_tpot_s: float) -> BenchRun:
    """`input_tokens[i]`: request i's prompt tokens as counted client-side (used where the
    upstream sent no usage block)."""
    cached = [r for r in records if r.ok and r.cached]
    ok = [r for r in records if r.ok and not r.cached]  # what the engine itself served
    n_in = sum(prompt_tokens(r, input_tokens[r.index]) for r in ok)
    n_out = sum(r.output_tokens for r in ok)
    duration = max(duration_s, 1e-9)
    tpots = [t for r in ok if (t := r.tpot) is not None]
    itl = [b - a for r in ok for a, b in pairwise(r.chunk_times)]
    good = [r for r in ok if r.ttft <= slo_ttft_s and (r.tpot or 0.0) <= slo_tpot_s]
    errors = list(dict.fromkeys(r.error for r in records if r.error))[:MAX_ERRORS]
    drafts = [r for r in ok if r.draft_tokens is not None]
    drafted = sum(r.draft_tokens for r in drafts) if drafts else None
    accepted = sum(r.draft_accepted or 0 for r in drafts) if drafts else None
    starts = sorted(r.start for r in records)
    offered = (len(starts) - 1) / (starts[-1] - starts[0]) if rate and len(starts) > 1 \
        and starts[-1] > starts[0] else None
    return BenchRun(
        profile="rate" if rate is not None else "concurrency",
        concurrency=concurrency, rate=rate,
        requests_sent=len(records), requests_ok=len(ok), requests_cached=len(cached),
        requests_failed=len(records) - len(ok) - len(cached),
        errors=errors, duration_s=duration_s, input_tokens=n_in, output_tokens=n_out,
        token_counts=_token_counts(ok),
        ttft_s=stats([r.ttft for r in ok]), tpot_s=stats(tpots), itl_s=stats(itl),
        e2e_s=stats([r.e2e for r in ok]),
        request_throughput=len(ok) / duration, output_tokens_per_s=n_out / duration,
        total_tokens_per_s=(n_in + n_out) / duration,
        concurrency_observed=sum(r.e2e for r in records) / duration,  # Little's law
        offered_rate=offered,
        goodput_rps=len(good) / duration,
        goodput_fraction=len(good) / len(records) if records else 0.0,
        draft_tokens=drafted, draft_tokens_accepted=accepted,
        draft_acceptance=accepted / drafted if drafted else None,
    )


def _token_counts(ok: list[RequestRecord]) -> TokenCounts:
    with_usage = sum(r.usage for r in ok)
    if with_usage == len(ok):
        return "usage"
    return "counted" if with_usage == 0 else "mixed"


def measure_rho(records: list[RequestRecord], input_tokens: list[int]) -> float | None:
    """(TTFT per prompt token) / TPOT over a run's successful requests, or None."""
    ok = [r for r in records if r.ok and not r.cached and r.output_tokens > 1]
    prompt = sum(prompt_tokens(r, input_tokens[r.index]) for r in ok)
    decode_s = sum(r.e2e - r.ttft for r in ok)
    steps = sum(r.output_tokens - 1 for r in ok)
    if not ok or prompt <= 0 or decode_s <= 0:
        return None
    return (sum(r.ttft for r in ok) / prompt) / (decode_s / steps)


def with_cost(run: BenchRun, rho: float, usd_per_hour: float) -> BenchRun:
    """The run with machine-seconds and $ per 1M tokens filled in."""
    weighted = run.output_tokens + rho * run.input_tokens
    if weighted <= 0:
        return run
    s_out = run.duration_s * 1e6 / weighted
    usd_per_s = usd_per_hour / 3600
    return run.model_copy(update={
        "machine_s_per_1m_output": s_out,
        "machine_s_per_1m_input": rho * s_out,
        "usd_per_1m_output": usd_per_s * s_out,
        "usd_per_1m_input": usd_per_s * rho * s_out,
        "usd_per_1m_tokens": usd_per_s * run.duration_s * 1e6
        / (run.input_tokens + run.output_tokens),
    })
