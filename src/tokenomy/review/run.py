"""`tokenomy review`: the ledger's window read into findings, ranked by $/month."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from tokenomy.review.allocation import Allocation, allocate
from tokenomy.review.capacity import budget_runout, easy_traffic, idle_capacity
from tokenomy.review.context import Context
from tokenomy.review.data import LedgerData, Window, read_ledger
from tokenomy.review.finding import Finding, Skipped
from tokenomy.review.requests import (
    cache_repeats,
    cut_answers,
    failed_spend,
    long_histories,
    prefix_cache,
)
from tokenomy.serve.config import GatewayConfig

CHECKS = (cache_repeats, prefix_cache, easy_traffic, long_histories, cut_answers,
          failed_spend, budget_runout)


@dataclass
class Review:
    ledger: str
    window: Window  # as asked
    observed: Window  # what the ledger covers of it
    scale: float  # 30 days / observed
    requests: int
    spend_usd: float  # metered (usage basis)
    allocation: Allocation
    findings: list[Finding]  # savings by $/month, then risks
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def conditions(self) -> str:
        """How every dollar figure was obtained, in one line."""
        start, end = (dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M")
                      for t in (self.observed.since, self.observed.until))
        return (f"from the ledger {self.ledger}, {start} .. {end} UTC "
                f"({_span(self.observed.seconds)} of data, {self.requests} requests); "
                f"$/month = the window's $ x {self.scale:.4g} (extrapolated to 30 days)")

    @property
    def total_month(self) -> float:
        return sum(f.usd_month for f in self.findings if f.kind == "saving")

    def to_dict(self) -> dict:
        return {"ledger": self.ledger, "conditions": self.conditions,
                "window": {"since": self.window.since, "until": self.window.until},
                "observed": {"since": self.observed.since, "until": self.observed.until,
                             "seconds": self.observed.seconds},
                "scale_to_month": self.scale, "requests": self.requests,
                "spend_usd": {"value": self.spend_usd, "basis": "measured (metered)"},
                "spend_month_usd": self.spend_usd * self.scale,
                "savings_month_usd": self.total_month,
                "findings": [f.to_dict() for f in self.findings],
                "skipped": [s.__dict__ for s in self.skipped],
                "allocation": self.allocation.to_dict()}


def review(url: str, config: GatewayConfig, since_s: float | None = None,
           until: float | None = None) -> Review:
    return review_data(read_ledger(url, since_s, until), config)


def review_data(data: LedgerData, config: GatewayConfig) -> Review:
    ctx = Context(data, config)
    alloc = allocate(data, config)
    found, skipped = [], []
    for check in CHECKS:
        _keep(check(ctx), found, skipped)
    _keep(idle_capacity(ctx, alloc), found, skipped)
    found.sort(key=lambda f: (f.kind != "saving", -f.usd_month))
    skipped += [Skipped("allocation", note) for note in alloc.notes]
    return Review(data.url, data.window, data.observed, ctx.scale, len(data.rows),
                  sum(float(r["cost_usd"] or 0) for r in data.rows), alloc, found, skipped)


def _keep(result, found: list, skipped: list) -> None:
    if isinstance(result, Finding):
        found.append(result)
    elif isinstance(result, Skipped):
        skipped.append(result)


def _span(seconds: float) -> str:
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.1f} minutes"


__all__ = ["Review", "review", "review_data"]
