"""What /dashboard shows, from the ledger: two SELECTs (the window's finished usage rows,
the API keys), aggregated in Python. Runs in a worker thread, never on the request path.

Measured: spend, tokens, latency and TTFT as the gateway recorded them. Estimated: the
cache's saving (a cache hit is recorded at $0 with `price_basis` "cache hit: $0"; what it
would have cost is its cached tokens at its deployment's mean measured $ per token over
the window's uncached answers, else at the meter's input rate: a lower bound).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from tokenomy.errors import InvalidInputError
from tokenomy.serve.budgets import current_spent, period_start
from tokenomy.serve.ledger import api_keys, usage

WINDOWS = {"24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
HOURLY_UP_TO_S = 86_400  # longer windows get daily buckets
TOP = 6  # series drawn per stacked plot; the rest are summed as "other"
COLUMNS = ("key_id", "model", "deployment", "status", "started_at", "latency_s", "ttft_s",
           "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "cache",
           "feature")


@dataclass
class Percentiles:
    deployment: str
    requests: int
    latency: tuple[float, float, float] | None  # p50 p95 p99, seconds
    ttft: tuple[float, float, float] | None


@dataclass
class Budget:
    key: str  # "name (id)"
    period: str  # daily / weekly / monthly / lifetime
    spent_usd: float
    budget_usd: float
    period_end: float | None  # epoch seconds; None for a lifetime budget


@dataclass
class Dashboard:
    since: str
    start: float
    now: float
    bucket_s: int
    labels: list[str]  # one per bucket
    requests: int = 0
    spend_usd: float = 0.0
    spend: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # by -> series
    totals: dict[str, dict[str, float]] = field(default_factory=dict)  # by -> group -> $
    tokens: dict[str, list[float]] = field(default_factory=dict)  # kind -> per bucket
    token_totals: dict[str, int] = field(default_factory=dict)
    cache: list[dict] = field(default_factory=list)  # per deployment: hits, tokens, saving
    saving_usd: float = 0.0
    latency: list[Percentiles] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)


def window(since: str) -> int:
    if since not in WINDOWS:
        raise InvalidInputError(f"since={since!r}: use one of {', '.join(WINDOWS)}")
    return WINDOWS[since]


def load(ledger, since: str, rate_per_token) -> Dashboard:
    """The dashboard for the window `since` ending now (the ledger's clock).
    `rate_per_token(deployment)`: $ per token from the meter, the saving's fallback."""
    span, now = window(since), ledger.clock()
    bucket = 3600 if span <= HOURLY_UP_TO_S else 86_400
    start = (now - span) // bucket * bucket  # the UTC hour or day the window starts in
    n = int((now - start) // bucket) + 1
    cols = [usage.c[c] for c in COLUMNS]
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).where(
            usage.c.started_at >= now - span, usage.c.status != "in_flight")).all()
        keys = conn.execute(sa.select(api_keys.c.id, api_keys.c.name, api_keys.c.budget_usd,
                                      api_keys.c.spent_usd, api_keys.c.budget_period,
                                      api_keys.c.period_start)).all()
    names = {k.id: f"{k.name} ({k.id})" for k in keys}
    fmt = "%H:00" if bucket == 3600 else "%m-%d"
    d = Dashboard(since, now - span, now, bucket, [
        dt.datetime.fromtimestamp(start + i * bucket, dt.UTC).strftime(fmt)
        for i in range(n)])
    d.latency = _aggregate(d, rows, names, start, n, rate_per_token)
    d.budgets = _budgets(keys, now)
    return d


def _aggregate(d: Dashboard, rows, names: dict, start: float, n: int, rate_per_token
               ) -> list[Percentiles]:
    """One pass over the rows (plain tuples: a Row's attributes cost ~10x more)."""
    kinds = ("prompt", "completion", "cached")
    tokens = d.tokens = {k: [0.0] * n for k in kinds}
    prompt_t, completion_t, cached_t = tokens["prompt"], tokens["completion"], tokens["cached"]
    per: dict[str, dict[str, list[float]]] = {b: {} for b in ("model", "key", "feature")}
    by_model, by_key, by_feature = per["model"], per["key"], per["feature"]
    paid: dict[str, list[float]] = {}  # deployment -> [$, tokens] of uncached ok answers
    hits: dict[str, list[int]] = {}  # deployment -> [hits, cached tokens]
    lat: dict[str, tuple[list[float], list[float]]] = {}
    for (key_id, model, dep, status, started, latency, ttft, prompt, completion, cached,
         cost, cache, feature) in rows:
        i = min(n - 1, int((started - start) // d.bucket_s))
        d.spend_usd += cost
        name = dep or model
        for series, group in ((by_model, name), (by_key, names.get(key_id, key_id)),
                              (by_feature, feature or "(none)")):
            values = series.get(group)
            if values is None:
                values = series[group] = [0.0] * n
            values[i] += cost
        prompt_t[i] += prompt
        completion_t[i] += completion
        cached_t[i] += cached
        if cache:
            h = hits.setdefault(name, [0, 0])
            h[0] += 1
            h[1] += cached
        elif status == "ok" and dep is not None:
            s = paid.setdefault(dep, [0.0, 0])
            s[0] += cost
            s[1] += prompt + completion
            a, b = lat.setdefault(dep, ([], []))
            if latency is not None:
                a.append(latency)
            if ttft is not None:
                b.append(ttft)
    d.requests = len(rows)
    d.token_totals = {k: int(sum(v)) for k, v in tokens.items()}
    for by, series in per.items():
        d.totals[by] = {g: sum(v) for g, v in series.items()}
        d.spend[by] = _top(series)
    _cache(d, paid, hits, rate_per_token)
    return [Percentiles(dep, len(a), _p(a), _p(b)) for dep, (a, b) in sorted(lat.items())]


def _top(series: dict[str, list[float]]) -> dict[str, list[float]]:
    """The TOP series by total, then the rest summed as 'other'."""
    ranked = sorted(series, key=lambda g: -sum(series[g]))
    out = {g: series[g] for g in ranked[:TOP]}
    if len(ranked) > TOP:
        out["other"] = [sum(vs) for vs in zip(*(series[g] for g in ranked[TOP:]),
                                              strict=True)]
    return out


def _cache(d: Dashboard, paid: dict, hits: dict, rate_per_token) -> None:
    for dep, (count, tokens) in sorted(hits.items()):
        measured = paid.get(dep)
        if measured and measured[1]:
            per_token, basis = measured[0] / measured[1], "mean measured $/token"
        else:
            per_token, basis = rate_per_token(dep), "meter's input rate (a lower bound)"
        saving = tokens * per_token
        d.saving_usd += saving
        d.cache.append({"deployment": dep, "hits": count, "cached_tokens": tokens,
                        "usd_per_token": per_token, "saving_usd": saving, "basis": basis})


def percentile(values: list[float], q: float, *, ordered: bool = False) -> float:
    """The nearest-rank percentile (q in 0-100) of a non-empty list."""
    values = values if ordered else sorted(values)
    rank = max(1, -(-len(values) * q // 100))
    return values[int(rank) - 1]


def _p(values: list[float]) -> tuple[float, float, float] | None:
    values.sort()
    return tuple(percentile(values, q, ordered=True) for q in (50, 95, 99)) if values else None


def _budgets(keys, now: float) -> list[Budget]:
    out = []
    for k in keys:
        if k.budget_usd is None:
            continue
        out.append(Budget(f"{k.name} ({k.id})", k.budget_period or "lifetime",
                          current_spent(k._mapping, now), k.budget_usd,
                          period_end(k.budget_period, now)))
    return out


def period_end(period: str | None, now: float) -> float | None:
    """When the current period of `period` ends (UTC), None for a lifetime budget."""
    start = period_start(period, now)
    if start is None:
        return None
    if period == "daily":
        return start + 86_400
    if period == "weekly":
        return start + 7 * 86_400
    first = dt.datetime.fromtimestamp(start, dt.UTC)
    nxt = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    return nxt.timestamp()


__all__ = [
    "WINDOWS",
    "Budget",
    "Dashboard",
    "Percentiles",
    "load",
    "percentile",
    "period_end",
    "window",
]
