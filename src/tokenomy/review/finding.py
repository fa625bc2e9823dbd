"""One thing `tokenomy review` found: what it would save (or risk) per month, how the
figure was obtained, the evidence from the ledger, and the config change that acts on
it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MONTH_S = 30 * 86_400.0
EXAMPLES = 5  # example usage ids per finding


@dataclass
class Finding:
    id: str  # stable name: cache-repeats, prefix-cache, router, ...
    title: str
    usd_window: float  # over the ledger window observed
    usd_month: float  # the same, extrapolated to 30 days
    basis: str  # "measured" (sums of metered costs in the ledger) or "estimated"
    how: str  # how the figure was computed, in one sentence
    evidence: dict  # counts, tokens, dollars
    examples: list[str]  # usage ids
    change: str  # the gateway config (YAML) or engine/client change
    kind: str = "saving"  # saving | risk (a risk's $ is what it puts at stake)
    caveats: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    id: str
    reason: str


def examples(rows: list[dict]) -> list[str]:
    return [r["id"] for r in rows[:EXAMPLES]]


__all__ = ["EXAMPLES", "MONTH_S", "Finding", "Skipped", "examples"]
