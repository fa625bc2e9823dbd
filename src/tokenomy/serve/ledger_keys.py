"""API keys' rows as the request path reads them (`Key`), why an admission was refused,
and the checks on a key's fields (budget, rate limit, period, soft limit, webhook)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields

from tokenomy.errors import InvalidInputError, TokenomyError
from tokenomy.numbers import Range
from tokenomy.serve.budgets import PERIODS, current_spent

log = logging.getLogger("tokenomy.serve")

RATE_WINDOW_S = 60.0


class AdmissionError(TokenomyError):
    """A request refused before it reached an upstream: bad key, budget, rate limit."""

    def __init__(self, message: str, status: int, code: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Key:
    id: str
    name: str
    budget_usd: float | None
    spent_usd: float
    reserved_usd: float
    rpm_limit: int | None
    revoked: bool
    tags: tuple[str, ...] = ()
    budget_period: str | None = None
    period_start: float | None = None
    soft_limit_usd: float | None = None
    webhook_url: str | None = None

    def spent_now(self, now: float) -> float:
        """Spent in the current period (0 once it rolled over, before the reset is written)."""
        return current_spent(self.__dict__, now)


KEY_COLUMNS = tuple(f.name for f in fields(Key))  # a Key's row, in order
REFUSAL_COLUMNS = ("id", "revoked", "budget_usd", "spent_usd", "reserved_usd", "rpm_limit",
                   "window_start", "window_count", "budget_period",
                   "period_start")  # what refusal() reads


def key_from_values(values) -> Key:
    """A Key from its KEY_COLUMNS' values (tags as stored: a JSON list or NULL)."""
    row = dict(zip(KEY_COLUMNS, values, strict=True))
    row["revoked"] = bool(row["revoked"])
    row["tags"] = tuple(json.loads(row["tags"])) if row["tags"] else ()
    return Key(**row)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def refusal(row: Mapping | None, estimate: float, now: float) -> AdmissionError:
    """Why a key's admission UPDATE changed nothing, from the key's row read after it."""
    if row is None or row["revoked"]:
        return AdmissionError("invalid or revoked API key", 401, "invalid_api_key")
    period = f" this {_UNIT[row['budget_period']]}" if row["budget_period"] else ""
    spent = current_spent(row, now)
    # Re-read after the refused UPDATE, the key may have changed since (a reservation
    # released, say): decide by the rate window, which is the rarer refusal.
    window_full = (row["rpm_limit"] is not None
                   and row["window_start"] > now - RATE_WINDOW_S
                   and row["window_count"] >= row["rpm_limit"])
    if row["budget_usd"] is not None and not window_full:
        return AdmissionError(
            f"budget exceeded for key {row['id']}: spent{period} ${spent:.6f} + in flight "
            f"${row['reserved_usd']:.6f} + this request up to ${estimate:.6f} > budget "
            f"${row['budget_usd']:.6f}; raise it with `tokenomy keys update {row['id']} "
            "--budget USD`", 429, "budget_exceeded")
    return AdmissionError(
        f"rate limit of {row['rpm_limit']} requests/minute reached for key {row['id']}; retry "
        f"in {max(0.0, row['window_start'] + RATE_WINDOW_S - now):.0f} s", 429,
        "rate_limit_exceeded")


def warn_if_over(usage_id: str, key_id: str, cost_usd: float, reserved_usd: float) -> None:
    if cost_usd > reserved_usd * (1 + 1e-9):  # the key stays blocked past its budget
        log.warning("request %s cost $%.8f, over its reservation $%.8f: charged in full; "
                    "key %s is refused from now on if past its budget", usage_id, cost_usd,
                    reserved_usd, key_id)


_UNIT = {"daily": "day", "weekly": "week", "monthly": "month"}
BUDGET_USD = Range(ge=0, le=1e9)
RPM_LIMIT = Range(ge=1, le=1_000_000, integer=True)


SOFT_LIMIT_USD = Range(ge=0, le=1e9)


def _check_key_fields(budget_usd: float | None, rpm_limit: int | None,
                      period: str | None = None, soft_limit_usd: float | None = None,
                      webhook_url: str | None = None) -> None:
    if budget_usd is not None:
        BUDGET_USD.check(budget_usd, "budget (USD)")
    if rpm_limit is not None:
        RPM_LIMIT.check(rpm_limit, "rate limit (requests/minute)")
    if period is not None and period not in PERIODS:
        raise InvalidInputError(f"budget period {period!r}: use one of {', '.join(PERIODS)}")
    if soft_limit_usd is not None:
        SOFT_LIMIT_USD.check(soft_limit_usd, "soft limit (USD)")
    if webhook_url is not None and (not webhook_url.startswith(("http://", "https://"))
                                    or len(webhook_url) > 2000
                                    or not webhook_url.isprintable() or " " in webhook_url):
        raise InvalidInputError(f"webhook {webhook_url[:80]!r} is not an http(s) URL")
