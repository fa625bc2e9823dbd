"""What `tokenomy review` and the allocation basis read from the gateway's ledger: the
usage rows, gateway instances and API keys of a time window, with the columns this
ledger has. A ledger written by an older gateway lacks some columns; the findings that
need them are skipped with a note, never guessed."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from tokenomy.errors import InvalidInputError
from tokenomy.serve.ledger import api_keys, instances, usage

_UNITS = {"m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 7 * 86_400.0}
MAX_WINDOW_S = 10 * 365 * 86_400.0


def parse_duration(text: str, option: str = "--since") -> float:
    """'30d', '12h', '90m', '2w' (or a plain number of days) as seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise InvalidInputError(f"{option} {text!r} is not a duration: give e.g. 30d, 12h, "
                                "90m or 2w")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "d"]
    if seconds > MAX_WINDOW_S:
        raise InvalidInputError(f"{option} {text!r} is longer than 10 years")
    return seconds


@dataclass(frozen=True)
class Window:
    since: float
    until: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.until - self.since)

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    def clip(self, start: float, end: float) -> tuple[float, float]:
        return max(start, self.since), min(end, self.until)


@dataclass
class LedgerData:
    url: str  # credentials hidden
    window: Window  # as asked (--since .. now)
    rows: list[dict]  # usage rows started in the window, oldest first
    instances: list[dict]  # gateway runs overlapping the window
    keys: list[dict]
    columns: set[str]  # the usage table's columns in this ledger
    key_columns: set[str]
    notes: list[str] = field(default_factory=list)

    def has(self, *columns: str) -> bool:
        return all(c in self.columns for c in columns)

    def missing(self, *columns: str) -> list[str]:
        return [c for c in columns if c not in self.columns]

    @property
    def observed(self) -> Window:
        """The part of the window the ledger saw: from its first gateway run or request
        in the window (whichever is earlier) to the end. Extrapolations divide by this."""
        starts = [r["started_at"] for r in self.rows]
        starts += [i["started_at"] for i in self.instances]
        first = max(self.window.since, min(starts)) if starts else self.window.until
        return Window(first, self.window.until)


def read_ledger(url: str, since_s: float | None = None, until: float | None = None
                ) -> LedgerData:
    """The window [until - since_s, until] (default: everything up to now) of the
    ledger at `url`, which must exist (nothing is created or written)."""
    from tokenomy.serve.ledger import Ledger
    from tokenomy.serve.ledger_db import _safe

    until = time.time() if until is None else until
    window = Window(until - since_s if since_s else 0.0, until)
    ledger = Ledger(url, create=False)
    try:
        engine = ledger.engine
        inspector = sa.inspect(engine)
        columns = {c["name"] for c in inspector.get_columns(usage.name)}
        key_columns = {c["name"] for c in inspector.get_columns(api_keys.name)}
        u = _reflected(usage, columns)
        k = _reflected(api_keys, key_columns)
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                sa.select(u).where(u.c.started_at >= window.since, u.c.started_at <= until)
                .order_by(u.c.started_at, u.c.id))]
            keys = [dict(r._mapping) for r in conn.execute(sa.select(k))]
            runs = []
            if inspector.has_table(instances.name):
                end = sa.func.coalesce(instances.c.stopped_at, instances.c.heartbeat_at)
                runs = [dict(r._mapping) for r in conn.execute(
                    sa.select(instances).where(instances.c.started_at <= until,
                                               end >= window.since)
                    .order_by(instances.c.started_at))]
    finally:
        ledger.close()
    for key in keys:
        key.pop("key_hash", None)  # never carried into a report
    return LedgerData(_safe(url), window, rows, runs, keys, columns, key_columns)


def _reflected(table: sa.Table, have: set[str]) -> sa.Table:
    """`table` as this ledger has it: the known columns it holds, plus the ones it holds
    that this tokenomy does not declare yet (added by a newer gateway)."""
    meta = sa.MetaData()
    cols = [sa.Column(c.name, c.type) for c in table.columns if c.name in have]
    known = {c.name for c in cols}
    cols += [sa.Column(name, sa.Text) for name in sorted(have - known)]
    return sa.Table(table.name, meta, *cols)


__all__ = ["LedgerData", "Window", "parse_duration", "read_ledger"]
