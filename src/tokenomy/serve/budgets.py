"""Budgets that reset, and the soft limit's webhook.

A key's budget applies per period when it has one: `daily`, `weekly` (ISO weeks, from
Monday) or `monthly` (calendar months), on UTC boundaries. The reset is part of the
admission statement itself, in all three ledgers: when the key's `period_start` is
before the current period's boundary, the same conditional UPDATE that checks
`spent + reserved + estimate <= budget` counts `spent` as 0 and writes `spent_usd = 0,
period_start = boundary`. Nothing runs on a timer, and two gateways meeting the boundary
at once reset it once (the key's row is updated by one statement at a time).

In flight across a reset: a request is charged to the period it was admitted in. Its
reservation stays in `reserved_usd` (the new period admits against it until it
finishes, so the new period is never overspent), and on completion the reservation is
released while its cost is added to `spent_usd` only if the request started at or after
the key's `period_start` (else its period's spend was already set aside at the reset):
never a negative and never a double count. The usage row keeps its cost either way.

Soft limit: when a completion leaves `spent_usd >= soft_limit_usd`, a conditional UPDATE
(`soft_notified_period < period_start`, set to `period_start`) decides in the database
that this gateway sends the webhook, once per period (once ever without a period). The
POST (JSON: key_id, name, period, period_start, spent_usd, soft_limit_usd, budget_usd)
goes out in a task of its own with a WEBHOOK_TIMEOUT_S timeout; a failure is logged and
never touches the request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

log = logging.getLogger("tokenomy.serve")

PERIODS = ("daily", "weekly", "monthly")
WEBHOOK_TIMEOUT_S = 3.0
_DAY_S = 86_400


def period_start(period: str | None, now: float) -> float | None:
    """The UTC boundary `now` falls after, for `period` (None without one)."""
    if period is None:
        return None
    return boundaries(now)[period]


_memo: dict = {}


def boundaries(now: float) -> dict[str, float]:
    """{period: its current boundary} at `now` (computed once per UTC day)."""
    day = int(now // _DAY_S)
    found = _memo.get(day)
    if found is None:
        date = dt.datetime.fromtimestamp(day * _DAY_S, dt.UTC).date()
        week = date - dt.timedelta(days=date.weekday())
        month = date.replace(day=1)
        found = {"daily": float(day * _DAY_S), "weekly": _ts(week), "monthly": _ts(month)}
        if len(_memo) > 64:
            _memo.clear()
        _memo[day] = found
    return found


def _ts(date: dt.date) -> float:
    return dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()


def params(now: float) -> dict[str, float]:
    """The admission statement's boundary parameters."""
    b = boundaries(now)
    return {"day": b["daily"], "week": b["weekly"], "month": b["monthly"]}


def reset_sql(p: str = ":") -> tuple[str, str]:
    """(boundary, rolled): SQL for the key's current boundary (NULL without a period) and
    for 'its period has rolled over', with parameters :day, :week, :month (`p` ':' for
    SQLite/SQLAlchemy; '%' for psycopg's %(name)s)."""
    def arg(name: str) -> str:
        return f":{name}" if p == ":" else f"%({name})s"

    boundary = (f"(CASE budget_period WHEN 'daily' THEN {arg('day')} WHEN 'weekly' THEN "
                f"{arg('week')} WHEN 'monthly' THEN {arg('month')} END)")
    return boundary, f"(COALESCE(period_start, -1.0) < {boundary})"


def current_spent(row, now: float) -> float:
    """The key's spend in its current period: 0 once the period rolled over (even before
    an admission has written the reset)."""
    period = row["budget_period"]
    if period and (row["period_start"] or -1.0) < boundaries(now)[period]:
        return 0.0
    return row["spent_usd"]


SOFT_COLUMNS = ("id", "name", "budget_period", "period_start", "spent_usd",
                "soft_limit_usd", "budget_usd", "webhook_url")


def soft_due(spent: float, soft_limit: float | None, notified: float | None,
             start: float | None) -> float | None:
    """The period marker to claim when a soft-limit notice is due, else None."""
    if soft_limit is None or spent < soft_limit:
        return None
    marker = start or 0.0
    return marker if notified is None or notified < marker else None


def claim_sql(table: str, p: str = ":") -> str:
    """Claim the period's notice: one row updated iff this caller is the first."""
    def arg(name: str) -> str:
        return f":{name}" if p == ":" else f"%({name})s"

    return (f"UPDATE {table} SET soft_notified_period = {arg('marker')} WHERE id = "
            f"{arg('key_id')} AND soft_limit_usd IS NOT NULL AND "
            f"COALESCE(soft_notified_period, -1.0) < {arg('marker')} "
            f"RETURNING {', '.join(SOFT_COLUMNS)}")


def notice(row) -> dict:
    """The webhook's JSON body from a claimed key row (SOFT_COLUMNS)."""
    r = dict(zip(SOFT_COLUMNS, row, strict=True)) if not hasattr(row, "keys") else dict(row)
    return {"event": "soft_limit_reached", "key_id": r["id"], "name": r["name"],
            "period": r["budget_period"] or "lifetime", "period_start": r["period_start"],
            "spent_usd": r["spent_usd"], "soft_limit_usd": r["soft_limit_usd"],
            "budget_usd": r["budget_usd"], "webhook_url": r["webhook_url"]}


class Notifier:
    """Sends soft-limit webhooks off the request path (tasks kept until done)."""

    def __init__(self, client):
        self.client = client
        self.tasks: set[asyncio.Task] = set()

    def __call__(self, body: dict) -> None:
        url = body.pop("webhook_url", None)
        if not url:
            log.warning("key %s reached its soft limit ($%.6f of $%.6f spent) but has no "
                        "webhook", body["key_id"], body["spent_usd"], body["soft_limit_usd"])
            return
        task = asyncio.get_running_loop().create_task(self._post(url, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, url: str, body: dict) -> None:
        import httpx

        try:
            r = await self.client.post(url, json=body, timeout=WEBHOOK_TIMEOUT_S)
            if r.status_code >= 400:
                log.warning("soft-limit webhook %s answered %d", url, r.status_code)
        except (httpx.HTTPError, OSError) as exc:
            log.warning("soft-limit webhook %s failed: %s: %s", url,
                        exc.__class__.__name__, exc)

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=WEBHOOK_TIMEOUT_S)
