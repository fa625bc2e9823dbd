"""The usage ledger: API keys (stored hashed), per-key budgets and rate limits, and one
row per request. SQLite by default, PostgreSQL by URL (SQLAlchemy Core).

Budgets are enforced atomically with reservations. Admission is one conditional UPDATE
(`spent + reserved + estimate <= budget`, and the key's rate window not full), so two
gateways sharing a database cannot both take the last dollar. The request's usage row
is written in the same transaction, before any upstream call: a gateway killed mid-
request leaves an `in_flight` row, never a lost one. Completion moves the reservation
into `spent` at the metered cost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields

import sqlalchemy as sa

from tokenomy.errors import InvalidInputError, TokenomyError
from tokenomy.numbers import Range
from tokenomy.serve.ledger_db import (
    LedgerError,
    _check_sqlite,
    _create_sqlite,
    _engine,
    _safe,
    _sqlite_path,
)

log = logging.getLogger("tokenomy.serve")

ANONYMOUS = "anonymous"
RATE_WINDOW_S = 60.0

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
)

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


KEY_COLUMNS = tuple(f.name for f in fields(Key))  # a Key's row, in order
REFUSAL_COLUMNS = ("id", "revoked", "budget_usd", "spent_usd", "reserved_usd", "rpm_limit",
                   "window_start", "window_count")  # what refusal() reads


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Ledger:
    """Synchronous; the gateway calls it from worker threads."""

    def __init__(self, url: str, *, create: bool = True):
        """Open the ledger at `url`, creating it (SQLite file 0600, tables, the anonymous
        key) unless `create` is False: then a missing database or one that is not a
        tokenomy ledger is an error, and nothing is written (reports, key listings)."""
        self.url = url
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
                   rpm_limit: int | None = None) -> tuple[str, str]:
        """A new key; returns (key id, secret). Only the hash of the secret is stored."""
        _check_key_fields(budget_usd, rpm_limit)
        if not 1 <= len(name.strip()) <= 200 or not name.isprintable():
            raise InvalidInputError(f"key name must be 1 to 200 printable characters, got "
                                    f"{len(name)}")
        secret = "sk-tkn-" + secrets.token_urlsafe(24)
        key_id = "key_" + secrets.token_hex(6)
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(
                id=key_id, name=name, key_hash=hash_key(secret), created_at=time.time(),
                budget_usd=budget_usd, spent_usd=0.0, reserved_usd=0.0, rpm_limit=rpm_limit,
                window_start=0.0, window_count=0, revoked=False))
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
                   rpm_limit: int | None = None, revoked: bool | None = None) -> None:
        _check_key_fields(budget_usd, rpm_limit)
        values = {k: v for k, v in (("budget_usd", budget_usd), ("rpm_limit", rpm_limit),
                                    ("revoked", revoked)) if v is not None}
        if not values:
            raise InvalidInputError("nothing to update: give a budget or a rate limit")
        with self.engine.begin() as conn:
            done = conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**values))
        if done.rowcount != 1:
            raise TokenomyError(f"no API key {key_id!r}: see `tokenomy keys list`")

    # requests --------------------------------------------------------------------------
    def admit(self, key_id: str, estimate_usd: float, *, endpoint: str, model: str,
              stream: bool, now: float | None = None) -> str:
        """Reserve `estimate_usd` of the key's budget and take one slot of its rate window,
        atomically; write the request's in-flight row. Returns the usage id."""
        now = time.time() if now is None else now
        fresh = api_keys.c.window_start <= now - RATE_WINDOW_S
        usage_id = uuid.uuid4().hex
        with self.engine.begin() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked.is_(False))
                .where(sa.or_(api_keys.c.budget_usd.is_(None),
                              api_keys.c.spent_usd + api_keys.c.reserved_usd + estimate_usd
                              <= api_keys.c.budget_usd))
                .where(sa.or_(api_keys.c.rpm_limit.is_(None), fresh,
                              api_keys.c.window_count < api_keys.c.rpm_limit))
                .values(reserved_usd=api_keys.c.reserved_usd + estimate_usd,
                        window_count=sa.case((fresh, 1), else_=api_keys.c.window_count + 1),
                        window_start=sa.case((fresh, now), else_=api_keys.c.window_start))
            )
            if done.rowcount != 1:
                raise self._refusal(conn, key_id, estimate_usd, now)
            conn.execute(usage.insert().values(
                id=usage_id, key_id=key_id, endpoint=endpoint, model=model, status="in_flight",
                stream=stream, started_at=now, reserved_usd=estimate_usd, instance=self.instance,
                prompt_tokens=0,
                completion_tokens=0, cached_tokens=0, cost_usd=0.0))
        return usage_id

    def _refusal(self, conn, key_id: str, estimate: float, now: float) -> AdmissionError:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return refusal(row._mapping if row is not None else None, estimate, now)

    def finish(self, usage_id: str, key_id: str, *, status: str, cost_usd: float,
               deployment: str | None = None, **fields) -> None:
        """Record the outcome and move the reservation into `spent`, in one transaction."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(usage.c.reserved_usd, usage.c.started_at)
                               .where(usage.c.id == usage_id)).first()
            if row is None:
                return
            now = time.time()
            done = conn.execute(usage.update().where(
                usage.c.id == usage_id, usage.c.status == "in_flight").values(
                status=status, cost_usd=cost_usd, deployment=deployment, finished_at=now,
                latency_s=now - row.started_at, **fields))
            if done.rowcount != 1:
                return  # already finished (e.g. recovered): never count twice
            warn_if_over(usage_id, key_id, cost_usd, row.reserved_usd)
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(
                reserved_usd=api_keys.c.reserved_usd - row.reserved_usd,
                spent_usd=api_keys.c.spent_usd + cost_usd))

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
        """Spend by 'key', 'model' (deployment), 'day' or 'status'."""
        day = (sa.func.to_char(sa.func.to_timestamp(usage.c.started_at), "YYYY-MM-DD")
               if self.engine.dialect.name == "postgresql"
               else sa.func.date(usage.c.started_at, "unixepoch"))
        column = {"key": usage.c.key_id, "model": sa.func.coalesce(usage.c.deployment,
                                                                   usage.c.model),
                  "day": day, "status": usage.c.status}.get(by)
        if column is None:
            raise TokenomyError(f"cannot group usage by {by!r}: use key, model, day or status")
        query = sa.select(
            column.label("group"), sa.func.count().label("requests"),
            sa.func.sum(usage.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(usage.c.completion_tokens).label("completion_tokens"),
            sa.func.sum(usage.c.cached_tokens).label("cached_tokens"),
            sa.func.sum(sa.case((usage.c.cache.is_not(None), 1), else_=0)).label("cache_hits"),
            sa.func.sum(usage.c.cost_usd).label("cost_usd"),
            sa.func.avg(usage.c.latency_s).label("mean_latency_s"),
        ).group_by(column).order_by(column)
        if since is not None:
            query = query.where(usage.c.started_at >= since)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def close(self) -> None:
        self.engine.dispose()


def refusal(row: Mapping | None, estimate: float, now: float) -> AdmissionError:
    """Why a key's admission UPDATE changed nothing, from the key's row read after it."""
    if row is None or row["revoked"]:
        return AdmissionError("invalid or revoked API key", 401, "invalid_api_key")
    # Re-read after the refused UPDATE, the key may have changed since (a reservation
    # released, say): decide by the rate window, which is the rarer refusal.
    window_full = (row["rpm_limit"] is not None
                   and row["window_start"] > now - RATE_WINDOW_S
                   and row["window_count"] >= row["rpm_limit"])
    if row["budget_usd"] is not None and not window_full:
        return AdmissionError(
            f"budget exceeded for key {row['id']}: spent ${row['spent_usd']:.6f} + in flight "
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


BUDGET_USD = Range(ge=0, le=1e9)
RPM_LIMIT = Range(ge=1, le=1_000_000, integer=True)


def _check_key_fields(budget_usd: float | None, rpm_limit: int | None) -> None:
    if budget_usd is not None:
        BUDGET_USD.check(budget_usd, "budget (USD)")
    if rpm_limit is not None:
        RPM_LIMIT.check(rpm_limit, "rate limit (requests/minute)")


def _add_missing_columns(engine: sa.Engine) -> None:
    """A ledger made by an older tokenomy gains the columns added since (nullable)."""
    have = {c["name"] for c in sa.inspect(engine).get_columns(usage.name)}
    with engine.begin() as conn:
        for column in usage.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(sa.text(f"ALTER TABLE {usage.name} ADD COLUMN {column.name} "
                                     f"{kind}"))


def _key(row) -> Key:
    return Key(id=row.id, name=row.name, budget_usd=row.budget_usd, spent_usd=row.spent_usd,
               reserved_usd=row.reserved_usd, rpm_limit=row.rpm_limit, revoked=row.revoked)
