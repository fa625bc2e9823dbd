"""`tokenomy usage --by ...`: the ledger's spend grouped by key, model (deployment), day,
status, end user, feature or a tag's value.

Sums to the cent, and to the micro-dollar: every row's cost is rounded once, in the
database, to integer micro-dollars (`CAST(ROUND(cost_usd * 1e6) AS BIGINT)`), and every
group and the total are sums of those integers. So the printed parts (6 decimals) add up
exactly to the printed total, and every grouping has the same total.

`tag:NAME` groups by the value of a row's first `NAME:value` tag ("(set)" for a bare
`NAME` tag, "(none)" without either): one group per row, so the parts still sum to the
total. `tag:feature` is the `feature` column.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from tokenomy.errors import TokenomyError
from tokenomy.serve.attribution import tag_value
from tokenomy.serve.ledger import usage

NONE = "(none)"
GROUPINGS = ("key", "model", "day", "status", "user", "feature", "tag:NAME")


def _micro():
    return sa.cast(sa.func.round(usage.c.cost_usd * 1_000_000), sa.BigInteger)


def _column(ledger, by: str):
    day = (sa.func.to_char(sa.func.to_timestamp(usage.c.started_at), "YYYY-MM-DD")
           if ledger.engine.dialect.name == "postgresql"
           else sa.func.date(usage.c.started_at, "unixepoch"))
    return {"key": usage.c.key_id,
            "model": sa.func.coalesce(usage.c.deployment, usage.c.model),
            "day": day, "status": usage.c.status,
            "user": sa.func.coalesce(usage.c.end_user, NONE),
            "feature": sa.func.coalesce(usage.c.feature, NONE),
            "tag:feature": sa.func.coalesce(usage.c.feature, NONE)}.get(by)


def summary(ledger, by: str = "key", since: float | None = None) -> list[dict]:
    """One dict per group, sorted by group: requests, token sums, cache hits,
    cost_micro_usd (an integer), cost_usd (the same in dollars), mean_latency_s."""
    column = _column(ledger, by)
    if column is None and not (by.startswith("tag:") and len(by) > 4):
        raise TokenomyError(f"cannot group usage by {by!r}: use one of "
                            f"{', '.join(GROUPINGS)}")
    if column is None:
        return _by_tag(ledger, by[4:], since)
    query = sa.select(
        column.label("group"), sa.func.count().label("requests"),
        sa.func.sum(usage.c.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(usage.c.completion_tokens).label("completion_tokens"),
        sa.func.sum(usage.c.cached_tokens).label("cached_tokens"),
        sa.func.sum(sa.case((usage.c.cache.is_not(None), 1), else_=0)).label("cache_hits"),
        sa.func.sum(_micro()).label("cost_micro_usd"),
        sa.func.avg(usage.c.latency_s).label("mean_latency_s"),
    ).group_by(column).order_by(column)
    if since is not None:
        query = query.where(usage.c.started_at >= since)
    with ledger.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for r in rows:
        for k in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_hits",
                  "cost_micro_usd"):
            r[k] = int(r[k] or 0)
        r["cost_usd"] = r["cost_micro_usd"] / 1e6
        r["mean_latency_s"] = (None if r["mean_latency_s"] is None
                               else float(r["mean_latency_s"]))
    return rows


def _by_tag(ledger, name: str, since: float | None) -> list[dict]:
    query = sa.select(usage.c.tags, usage.c.prompt_tokens, usage.c.completion_tokens,
                      usage.c.cached_tokens, usage.c.cache, usage.c.latency_s,
                      _micro().label("micro"))
    if since is not None:
        query = query.where(usage.c.started_at >= since)
    groups: dict[str, dict] = {}
    with ledger.engine.connect() as conn:
        for r in conn.execute(query):
            value = tag_value(json.loads(r.tags), name) if r.tags else None
            g = groups.setdefault(value or NONE, {
                "group": value or NONE, "requests": 0, "prompt_tokens": 0,
                "completion_tokens": 0, "cached_tokens": 0, "cache_hits": 0,
                "cost_micro_usd": 0, "latencies": []})
            g["requests"] += 1
            g["prompt_tokens"] += r.prompt_tokens or 0
            g["completion_tokens"] += r.completion_tokens or 0
            g["cached_tokens"] += r.cached_tokens or 0
            g["cache_hits"] += r.cache is not None
            g["cost_micro_usd"] += int(r.micro or 0)
            if r.latency_s is not None:
                g["latencies"].append(r.latency_s)
    out = []
    for key in sorted(groups):
        g = groups[key]
        lat = g.pop("latencies")
        out.append({**g, "cost_usd": g["cost_micro_usd"] / 1e6,
                    "mean_latency_s": sum(lat) / len(lat) if lat else None})
    return out


def total(rows: list[dict]) -> dict:
    """The groups' sum (integers: exact)."""
    keys = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_hits",
            "cost_micro_usd")
    out = {"group": "total", **{k: sum(r[k] for r in rows) for k in keys}}
    out["cost_usd"] = out["cost_micro_usd"] / 1e6
    return out


def usd(micro: int) -> str:
    """Micro-dollars printed with 6 decimals, exactly (no float rounding)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"
