"""The usage ledger: API keys (stored hashed), per-key budgets and rate limits, and one
row per request. SQLite by default, PostgreSQL by URL (SQLAlchemy Core).

Budgets are enforced atomically with reservations. Admission is one conditional UPDATE
(`spent + reserved + estimate <= budget`, and the key's rate window not full), so two
gateways sharing a database cannot both take the last dollar. The request's usage row
is written in the same transaction, before any upstream call: a gateway killed mid-
request leaves an `in_flight` row, never a lost one. Completion moves the reservation
into `spent` at the metered cost. Budget periods, their reset inside that UPDATE and the
soft limit: tokenomy.serve.budgets; attribution columns: tokenomy.serve.attribution.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid

import sqlalchemy as sa

from tokenomy.errors import InvalidInputError, TokenomyError
from tokenomy.serve import budgets
from tokenomy.serve.attribution import check_key_tags
from tokenomy.serve.ledger_db import (
    LedgerError,
    _check_sqlite,
    _create_sqlite,
    _engine,
    _safe,
    _sqlite_path,
)
from tokenomy.serve.ledger_keys import KEY_COLUMNS as KEY_COLUMNS
from tokenomy.serve.ledger_keys import RATE_WINDOW_S as RATE_WINDOW_S
from tokenomy.serve.ledger_keys import REFUSAL_COLUMNS as REFUSAL_COLUMNS
from tokenomy.serve.ledger_keys import AdmissionError as AdmissionError
from tokenomy.serve.ledger_keys import (
    Key,
    _check_key_fields,
    hash_key,
    key_from_values,
    refusal,
    warn_if_over,
)

log = logging.getLogger("tokenomy.serve")

ANONYMOUS = "anonymous"

metadata = sa.MetaData()

api_keys = sa.Table(
    "tokenomy_api_keys", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), unique=True, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("budget_usd", sa.Float, nullable=True),
    sa.Column("spent_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("reserved_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("rpm_limit", sa.Integer, nullable=True),
    sa.Column("window_start", sa.Float, nullable=False, default=0.0),
    sa.Column("window_count", sa.Integer, nullable=False, default=0),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("tags", sa.Text, nullable=True),  # default tags, a JSON list
    sa.Column("budget_period", sa.String(10), nullable=True),  # daily weekly monthly
    sa.Column("period_start", sa.Float, nullable=True),  # of the period spent_usd counts
    sa.Column("soft_limit_usd", sa.Float, nullable=True),
    sa.Column("webhook_url", sa.Text, nullable=True),
    sa.Column("soft_notified_period", sa.Float, nullable=True),  # its period_start
)

usage = sa.Table(
    "tokenomy_usage", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.String(40), nullable=False, index=True),
    sa.Column("endpoint", sa.String(40), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),  # as the client asked
    sa.Column("deployment", sa.String(200), nullable=True),  # what served it
    sa.Column("status", sa.String(20), nullable=False),  # in_flight ok error cancelled ...
    sa.Column("stream", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", sa.Float, nullable=False, index=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("latency_s", sa.Float, nullable=True),
    sa.Column("ttft_s", sa.Float, nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cached_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("token_counts", sa.String(20), nullable=True),  # usage | counted
    sa.Column("reserved_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("price_basis", sa.String(300), nullable=True),
    sa.Column("cache", sa.String(20), nullable=True),  # exact | semantic
    sa.Column("route", sa.String(300), nullable=True),  # the router's reason
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("instance", sa.String(40), nullable=True, index=True),  # the gateway owning it
    # attribution and fingerprints (tokenomy.serve.attribution), read by `tokenomy review`
    sa.Column("end_user", sa.String(200), nullable=True),
    sa.Column("feature", sa.String(100), nullable=True),
    sa.Column("tags", sa.Text, nullable=True),  # a JSON list
    sa.Column("prompt_hash", sa.String(64), nullable=True),
    sa.Column("prefix_hash", sa.String(64), nullable=True),
    sa.Column("prefix_chars", sa.Integer, nullable=True),
    sa.Column("finish_reason", sa.String(20), nullable=True),
    sa.Column("message_count", sa.Integer, nullable=True),
)
ROW_COLUMNS = ("end_user", "feature", "tags", "prompt_hash", "prefix_hash", "prefix_chars",
               "message_count")  # set at admission (Attribution and Fingerprint columns)

instances = sa.Table(  # gateway processes and their leases (tokenomy.serve.lease)
    "tokenomy_instances", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_started", sa.String(40), nullable=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=True),
)


class Ledger:
    """Synchronous; the gateway calls it from worker threads."""

    def __init__(self, url: str, *, create: bool = True, clock=time.time):
        """Open the ledger at `url`, creating it (SQLite file 0600, tables, the anonymous
        key) unless `create` is False: then a missing database or one that is not a
        tokenomy ledger is an error, and nothing is written (reports, key listings).
        `clock()`: the time in seconds since the epoch (budget periods; tests set it)."""
        self.url, self.clock = url, clock
        self.instance: str | None = None  # set by register(): the gateway owning new rows
        path = _sqlite_path(url)
        if path is not None and create:
            _create_sqlite(path, url)
        elif path is not None:
            _check_sqlite(path, url)
        try:
            self.engine = _engine(url)
            if create:
                metadata.create_all(self.engine)
                _add_missing_columns(self.engine)
            elif not sa.inspect(self.engine).has_table(usage.name):
                raise LedgerError(f"{_safe(url)} is not a tokenomy ledger (no {usage.name} "
                                  "table): check --db or the config's database_url")
            else:  # an older ledger read by a newer tokenomy: its columns, added empty
                _add_missing_columns(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the usage database {_safe(url)}: "
                              f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
        if not create:
            return
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(api_keys.c.id).where(
                api_keys.c.id == ANONYMOUS)).first()
            if not exists:
                conn.execute(api_keys.insert().values(
                    id=ANONYMOUS, name="requests without an API key", key_hash=None,
                    created_at=time.time(), spent_usd=0.0, reserved_usd=0.0,
                    window_start=0.0, window_count=0, revoked=False))

    # keys ------------------------------------------------------------------------------
    def create_key(self, name: str, budget_usd: float | None = None,
                   rpm_limit: int | None = None, *, period: str | None = None,
                   soft_limit_usd: float | None = None, webhook_url: str | None = None,
                   tags=()) -> tuple[str, str]:
        """A new key; returns (key id, secret). Only the hash of the secret is stored.
        `period`: the budget resets daily, weekly or monthly (UTC); `soft_limit_usd`:
        POST `webhook_url` once per period when spend reaches it; `tags`: default tags
        of its requests (tokenomy.serve.attribution)."""
        _check_key_fields(budget_usd, rpm_limit, period, soft_limit_usd, webhook_url)
        if not 1 <= len(name.strip()) <= 200 or not name.isprintable():
            raise InvalidInputError(f"key name must be 1 to 200 printable characters, got "
                                    f"{len(name)}")
        tags = check_key_tags(tags)
        secret = "sk-tkn-" + secrets.token_urlsafe(24)
        key_id = "key_" + secrets.token_hex(6)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(
                id=key_id, name=name, key_hash=hash_key(secret), created_at=now,
                budget_usd=budget_usd, spent_usd=0.0, reserved_usd=0.0, rpm_limit=rpm_limit,
                window_start=0.0, window_count=0, revoked=False,
                tags=json.dumps(list(tags)) if tags else None, budget_period=period,
                period_start=budgets.period_start(period, now),
                soft_limit_usd=soft_limit_usd, webhook_url=webhook_url))
        return key_id, secret

    def lookup(self, secret: str) -> Key | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(
                api_keys.c.key_hash == hash_key(secret))).first()
        return _key(row) if row else None

    def key(self, key_id: str) -> Key | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    def keys(self) -> list[Key]:
        with self.engine.connect() as conn:
            return [_key(r) for r in conn.execute(sa.select(api_keys).order_by(
                api_keys.c.created_at))]

    def update_key(self, key_id: str, *, budget_usd: float | None = None,
                   rpm_limit: int | None = None, revoked: bool | None = None,
                   period: str | None = None, soft_limit_usd: float | None = None,
                   webhook_url: str | None = None, tags=None) -> None:
        """Change what is given. `period="none"` makes the budget a lifetime one again;
        a new period starts at its current boundary, and what the key spent so far in
        it still counts (never more than the budget). `tags=()` clears the tags."""
        _check_key_fields(budget_usd, rpm_limit, None if period == "none" else period,
                          soft_limit_usd, webhook_url)
        values = {k: v for k, v in (("budget_usd", budget_usd), ("rpm_limit", rpm_limit),
                                    ("revoked", revoked), ("soft_limit_usd", soft_limit_usd),
                                    ("webhook_url", webhook_url)) if v is not None}
        if tags is not None:
            tags = check_key_tags(tags)
            values["tags"] = json.dumps(list(tags)) if tags else None
        if period is not None:
            values["budget_period"] = None if period == "none" else period
            values["period_start"] = budgets.period_start(values["budget_period"],
                                                          self.clock())
        if not values:
            raise InvalidInputError("nothing to update: give a budget, a period, a rate "
                                    "limit, a soft limit, a webhook or tags")
        with self.engine.begin() as conn:
            done = conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**values))
        if done.rowcount != 1:
            raise TokenomyError(f"no API key {key_id!r}: see `tokenomy keys list`")

    # requests --------------------------------------------------------------------------
    def admit(self, key_id: str, estimate_usd: float, *, endpoint: str, model: str,
              stream: bool, now: float | None = None, columns: dict | None = None) -> str:
        """Reserve `estimate_usd` of the key's budget (its period reset first when it has
        rolled over: tokenomy.serve.budgets) and take one slot of its rate window,
        atomically; write the request's in-flight row with `columns` (ROW_COLUMNS).
        Returns the usage id."""
        now = self.clock() if now is None else now
        fresh = api_keys.c.window_start <= now - RATE_WINDOW_S
        b = budgets.params(now)
        boundary = sa.case((api_keys.c.budget_period == "daily", b["day"]),
                           (api_keys.c.budget_period == "weekly", b["week"]),
                           (api_keys.c.budget_period == "monthly", b["month"]),
                           else_=None)
        rolled = sa.func.coalesce(api_keys.c.period_start, -1.0) < boundary
        spent = sa.case((rolled, 0.0), else_=api_keys.c.spent_usd)
        usage_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked.is_(False))
                .where(sa.or_(api_keys.c.budget_usd.is_(None),
                              spent + api_keys.c.reserved_usd + estimate_usd
                              <= api_keys.c.budget_usd))
                .where(sa.or_(api_keys.c.rpm_limit.is_(None), fresh,
                              api_keys.c.window_count < api_keys.c.rpm_limit))
                .values(spent_usd=spent,
                        period_start=sa.case((rolled, boundary),
                                             else_=api_keys.c.period_start),
                        reserved_usd=api_keys.c.reserved_usd + estimate_usd,
                        window_count=sa.case((fresh, 1), else_=api_keys.c.window_count + 1),
                        window_start=sa.case((fresh, now), else_=api_keys.c.window_start))
            )
            if done.rowcount != 1:
                raise self._refusal(conn, key_id, estimate_usd, now)
            conn.execute(usage.insert().values(
                id=usage_id, key_id=key_id, endpoint=endpoint, model=model, status="in_flight",
                stream=stream, started_at=now, reserved_usd=estimate_usd, instance=self.instance,
                prompt_tokens=0, completion_tokens=0, cached_tokens=0, cost_usd=0.0,
                **(columns or {})))
        return usage_id

    def _refusal(self, conn, key_id: str, estimate: float, now: float) -> AdmissionError:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return refusal(row._mapping if row is not None else None, estimate, now)

    def finish(self, usage_id: str, key_id: str, *, status: str, cost_usd: float,
               deployment: str | None = None, **fields) -> dict | None:
        """Record the outcome and move the reservation into `spent` (of the period the
        request was admitted in: tokenomy.serve.budgets), in one transaction. Returns the
        soft-limit webhook's body when this completion is the one to send it."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(usage.c.reserved_usd, usage.c.started_at)
                               .where(usage.c.id == usage_id)).first()
            if row is None:
                return None
            now = self.clock()
            done = conn.execute(usage.update().where(
                usage.c.id == usage_id, usage.c.status == "in_flight").values(
                status=status, cost_usd=cost_usd, deployment=deployment, finished_at=now,
                latency_s=now - row.started_at, **fields))
            if done.rowcount != 1:
                return None  # already finished (e.g. recovered): never count twice
            warn_if_over(usage_id, key_id, cost_usd, row.reserved_usd)
            this_period = row.started_at >= sa.func.coalesce(api_keys.c.period_start, -1.0)
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(
                reserved_usd=api_keys.c.reserved_usd - row.reserved_usd,
                spent_usd=api_keys.c.spent_usd + sa.case((this_period, cost_usd), else_=0.0)))
            key = conn.execute(sa.select(
                api_keys.c.spent_usd, api_keys.c.soft_limit_usd,
                api_keys.c.soft_notified_period, api_keys.c.period_start)
                .where(api_keys.c.id == key_id)).first()
            marker = budgets.soft_due(*key) if key is not None else None
            if marker is None:
                return None
            claimed = conn.execute(sa.text(budgets.claim_sql(api_keys.name)),
                                   {"marker": marker, "key_id": key_id}).first()
            return budgets.notice(claimed._mapping) if claimed is not None else None

    # gateway instances and crash recovery ---------------------------------------------
    def register(self) -> str:
        """This process as a gateway instance owning the rows it admits from now on."""
        from tokenomy.serve.lease import host_id, process_start

        now, pid = time.time(), os.getpid()
        self.instance = "gw_" + uuid.uuid4().hex[:16]
        with self.engine.begin() as conn:
            conn.execute(instances.insert().values(
                id=self.instance, host=host_id(), pid=pid, pid_started=process_start(pid),
                started_at=now, heartbeat_at=now))
        return self.instance

    def heartbeat(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(instances.update().where(instances.c.id == self.instance)
                         .values(heartbeat_at=time.time()))

    def deregister(self) -> int:
        """A clean stop: rows this instance still holds in flight are interrupted."""
        if self.instance is None:
            return 0
        with self.engine.begin() as conn:
            conn.execute(instances.update().where(instances.c.id == self.instance)
                         .values(stopped_at=time.time()))
        return self._interrupt(usage.c.instance == self.instance)

    def recover(self, lease_s: float, legacy_older_than_s: float = 720.0) -> int:
        """Rows whose gateway died: its process is gone from this host, or (another host)
        its lease expired. They are marked 'interrupted' and their reservations released
        (nothing is charged: no response reached the client in full). A live gateway's
        rows are never touched; rows from before instances were recorded are recovered
        once older than `legacy_older_than_s`."""
        from tokenomy.serve.lease import alive, host_id

        now, here = time.time(), host_id()
        with self.engine.connect() as conn:
            others = conn.execute(sa.select(instances).where(
                instances.c.stopped_at.is_(None), instances.c.id != (self.instance or ""))
            ).all()
        dead = [i.id for i in others if i.heartbeat_at < now - lease_s
                or (i.host == here and not alive(i.pid, i.pid_started))]
        if dead:
            with self.engine.begin() as conn:
                conn.execute(instances.update().where(instances.c.id.in_(dead))
                             .values(stopped_at=now))
        legacy = sa.and_(usage.c.instance.is_(None),
                         usage.c.started_at < now - legacy_older_than_s)
        return self._interrupt(sa.or_(usage.c.instance.in_(dead), legacy) if dead else legacy)

    def _interrupt(self, which) -> int:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(usage.c.id, usage.c.key_id).where(
                usage.c.status == "in_flight", which)).all()
        for row in rows:
            self.finish(row.id, row.key_id, status="interrupted", cost_usd=0.0,
                        error="the gateway stopped before this request finished")
        return len(rows)

    # reports ---------------------------------------------------------------------------
    def rows(self, **where) -> list[dict]:
        query = sa.select(usage).order_by(usage.c.started_at)
        for column, value in where.items():
            query = query.where(usage.c[column] == value)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def summary(self, by: str = "key", since: float | None = None) -> list[dict]:
        """Spend by 'key', 'model' (deployment), 'day', 'status', 'user', 'feature' or
        'tag:NAME', in integer micro-dollars (tokenomy.serve.usage_report)."""
        from tokenomy.serve.usage_report import summary

        return summary(self, by, since)

    def close(self) -> None:
        self.engine.dispose()


def _add_missing_columns(engine: sa.Engine) -> None:
    """A ledger made by an older tokenomy gains the columns added since (nullable, empty
    in its existing rows, which are kept)."""
    inspector = sa.inspect(engine)
    exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
    for table in (api_keys, usage):
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have and c.nullable]
        if not missing:
            continue
        with engine.begin() as conn:
            for column in missing:
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN{exists} "
                                     f"{column.name} {kind}"))


def _key(row) -> Key:
    return key_from_values(tuple(row._mapping[c] for c in KEY_COLUMNS))
