"""The ledger's three steps on every request, on the event loop's own thread.

`Ledger` (SQLAlchemy Core, called in worker threads) builds each statement anew and
costs a thread hop per transaction, and under load a wait for the GIL after each: most
of the gateway's own time per request. For a SQLite ledger the request path's steps run
here instead, as fixed SQL on one raw connection owned by the event loop:

- key lookup: one indexed read;
- admission: the key's conditional UPDATE and the request's in-flight row, one
  transaction, committed before any upstream call (the same statement as
  `Ledger.admit`: a budget is never overspent, whatever the concurrency);
- completion: the row's outcome and the reservation moved into `spent`, one transaction
  (`Ledger.finish`'s statements, with the reservation and start time the gateway already
  holds instead of a read).

The loop never blocks on the database: `BEGIN IMMEDIATE` with no busy timeout either takes
SQLite's write lock at once or fails with nothing written. While another connection holds
the lock (the checkpoint below, another gateway, a `tokenomy keys` command) the step waits
on the loop and tries again, and after `LOOP_WAIT_S` goes to `Ledger` in a worker thread,
which waits on.

Durability: WAL with synchronous=NORMAL, as `Ledger` opens it. A committed row is in the
WAL file before the upstream is called, so it survives the gateway process dying (kill
-9); only a power loss of the host can drop the last commits, which the OS had not yet
written out. The loop's connection never checkpoints (the checkpoint is what fsyncs):
`checkpoint()` runs in a worker thread, every second.

A PostgreSQL ledger's steps are single statements on the loop's own async connections
(`tokenomy.serve.ledger_pg`); anything else (in-memory SQLite) goes through `Ledger` in
worker threads.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable

from tokenomy.serve import budgets
from tokenomy.serve.ledger import (
    KEY_COLUMNS,
    RATE_WINDOW_S,
    REFUSAL_COLUMNS,
    ROW_COLUMNS,
    Key,
    Ledger,
    api_keys,
    hash_key,
    key_from_values,
    refusal,
    usage,
    warn_if_over,
)
from tokenomy.serve.ledger_db import _sqlite_path
from tokenomy.serve.ledger_pg import PostgresSteps

CHECKPOINT_EVERY_S = 1.0
LOOP_WAIT_S = 1.0  # for SQLite's write lock, on the loop, before a worker thread waits on
WAL_LIMIT_BYTES = 64 << 20  # the WAL file is cut back to this when it starts over

_LOOKUP = f"SELECT {', '.join(KEY_COLUMNS)} FROM {api_keys.name} WHERE key_hash = ?"
_KEY = f"SELECT {', '.join(REFUSAL_COLUMNS)} FROM {api_keys.name} WHERE id = ?"
_BOUNDARY, _ROLLED = budgets.reset_sql(":")
_RESERVE = f"""UPDATE {api_keys.name} SET
    spent_usd = CASE WHEN {_ROLLED} THEN 0.0 ELSE spent_usd END,
    period_start = CASE WHEN {_ROLLED} THEN {_BOUNDARY} ELSE period_start END,
    reserved_usd = reserved_usd + :estimate,
    window_count = CASE WHEN window_start <= :fresh THEN 1 ELSE window_count + 1 END,
    window_start = CASE WHEN window_start <= :fresh THEN :now ELSE window_start END
  WHERE id = :key_id AND revoked = 0
    AND (budget_usd IS NULL OR (CASE WHEN {_ROLLED} THEN 0.0 ELSE spent_usd END)
         + reserved_usd + :estimate <= budget_usd)
    AND (rpm_limit IS NULL OR window_start <= :fresh OR window_count < rpm_limit)"""
_INSERT = f"""INSERT INTO {usage.name} (id, key_id, endpoint, model, status, stream,
    started_at, reserved_usd, instance, prompt_tokens, completion_tokens, cached_tokens,
    cost_usd, {', '.join(ROW_COLUMNS)})
  VALUES (:id, :key_id, :endpoint, :model, 'in_flight', :stream, :now, :estimate,
    :instance, 0, 0, 0, 0.0, {', '.join(':' + c for c in ROW_COLUMNS)})"""
NO_COLUMNS = dict.fromkeys(ROW_COLUMNS)
_OUTCOME = f"""UPDATE {usage.name} SET status = :status, cost_usd = :cost_usd,
    deployment = :deployment, finished_at = :finished_at, latency_s = :latency_s,
    prompt_tokens = :prompt_tokens, completion_tokens = :completion_tokens,
    cached_tokens = :cached_tokens, token_counts = :token_counts, ttft_s = :ttft_s,
    price_basis = :price_basis, route = :route, cache = :cache, error = :error,
    finish_reason = :finish_reason
  WHERE id = :id AND status = 'in_flight'"""
# the cost goes to the period the request was admitted in (tokenomy.serve.budgets)
_SPEND = f"""UPDATE {api_keys.name} SET reserved_usd = reserved_usd - :reserved,
    spent_usd = spent_usd + CASE WHEN :started >= COALESCE(period_start, -1.0)
                                 THEN :cost ELSE 0.0 END
  WHERE id = :key_id
  RETURNING spent_usd, soft_limit_usd, soft_notified_period, period_start"""
_CLAIM = budgets.claim_sql(api_keys.name, ":")


def new_usage_id() -> str:
    """A new usage row's id: what `uuid.uuid4().hex` returns (random, version 4), without
    building a UUID object (a third of its time)."""
    b = bytearray(os.urandom(16))
    b[6], b[8] = b[6] & 0x0F | 0x40, b[8] & 0x3F | 0x80
    return b.hex()


class LoopLedger:
    """`lookup`, `admit` and `finish` for the request path (see the module docstring).
    `offload(fn, *args, **kwargs)` runs a `Ledger` method in a worker thread."""

    def __init__(self, ledger: Ledger, offload: Callable[..., Awaitable]):
        self.ledger, self._offload = ledger, offload
        self.on_soft_limit: Callable[[dict], None] | None = None  # the webhook's sender
        self._conn = _open(ledger.url)  # SQLite
        self._checkpointer: sqlite3.Connection | None = None  # used in a worker thread
        self._pg = (PostgresSteps(ledger.url) if ledger.engine.dialect.name == "postgresql"
                    else None)

    @property
    def inline(self) -> bool:
        """True when the steps run on the loop (a SQLite ledger file)."""
        return self._conn is not None

    async def lookup(self, secret: str) -> Key | None:
        if self._conn is not None:
            try:
                row = self._conn.execute(_LOOKUP, (hash_key(secret),)).fetchone()
            except sqlite3.OperationalError:  # busy (a WAL recovery elsewhere): wait there
                pass
            else:
                return key_from_values(row) if row else None
        if self._pg is not None:
            row = await self._pg.lookup(hash_key(secret))
            return key_from_values(row) if row else None
        return await self._offload(self.ledger.lookup, secret)

    async def admit(self, key_id: str, estimate_usd: float, *, endpoint: str, model: str,
                    stream: bool, now: float, columns: dict | None = None) -> str:
        """`Ledger.admit`: the usage id of the admitted request, or AdmissionError.
        `columns`: the row's ROW_COLUMNS (attribution and fingerprints)."""
        columns = {**NO_COLUMNS, **(columns or {})}
        if self._conn is not None and await self._begin():
            conn, usage_id = self._conn, new_usage_id()
            try:
                done = conn.execute(_RESERVE, {"estimate": estimate_usd, "now": now,
                                               "fresh": now - RATE_WINDOW_S,
                                               "key_id": key_id,
                                               **budgets.params(now)}).rowcount
                if done == 1:
                    conn.execute(_INSERT, {
                        "id": usage_id, "key_id": key_id, "endpoint": endpoint,
                        "model": model, "stream": int(stream), "now": now,
                        "estimate": estimate_usd, "instance": self.ledger.instance,
                        **columns})
                    conn.execute("COMMIT")
                    return usage_id
                row = conn.execute(_KEY, (key_id,)).fetchone()
                conn.execute("ROLLBACK")
            except BaseException:
                self._rollback()
                raise
            raise refusal(dict(zip(REFUSAL_COLUMNS, row, strict=True)) if row else None,
                          estimate_usd, now)
        if self._pg is not None:
            usage_id = new_usage_id()
            if await self._pg.admit({
                    "id": usage_id, "key_id": key_id, "endpoint": endpoint, "model": model,
                    "stream": stream, "now": now, "fresh": now - RATE_WINDOW_S,
                    "estimate": estimate_usd, "instance": self.ledger.instance,
                    **budgets.params(now), **columns}):
                return usage_id
            raise refusal(await self._pg.key(key_id), estimate_usd, now)
        return await self._offload(self.ledger.admit, key_id, estimate_usd,
                                   endpoint=endpoint, model=model, stream=stream, now=now,
                                   columns=columns)

    async def finish(self, usage_id: str, key_id: str, *, reserved_usd: float,
                     started_at: float, status: str, cost_usd: float,
                     deployment: str | None = None, prompt_tokens: int = 0,
                     completion_tokens: int = 0, cached_tokens: int = 0,
                     token_counts: str | None = None, ttft_s: float | None = None,
                     price_basis: str | None = None, route: str | None = None,
                     cache: str | None = None, error: str | None = None,
                     finish_reason: str | None = None) -> None:
        """`Ledger.finish` for a row admitted with `reserved_usd` at `started_at`."""
        fields = {"deployment": deployment, "prompt_tokens": prompt_tokens,
                  "completion_tokens": completion_tokens, "cached_tokens": cached_tokens,
                  "token_counts": token_counts, "ttft_s": ttft_s,
                  "price_basis": price_basis, "route": route, "cache": cache,
                  "error": error, "finish_reason": (finish_reason or None) and
                  str(finish_reason)[:20]}
        now = self.ledger.clock()
        if self._pg is not None:  # shielded: a cancelled request is still recorded
            spent = await asyncio.shield(self._pg.finish({
                **fields, "id": usage_id, "key_id": key_id, "status": status,
                "cost_usd": cost_usd, "now": now}))
            if spent is not None:
                warn_if_over(usage_id, key_id, cost_usd, spent[0])
                await self._soft(spent[1:], key_id)
            return
        if self._conn is None or not await self._begin():
            self._notify(await asyncio.shield(self._offload(
                self.ledger.finish, usage_id, key_id, status=status, cost_usd=cost_usd,
                **fields)))
            return
        conn, claimed = self._conn, None
        try:
            done = conn.execute(_OUTCOME, {
                **fields, "id": usage_id, "status": status, "cost_usd": cost_usd,
                "finished_at": now, "latency_s": now - started_at}).rowcount
            if done == 1:  # else already finished (recovered): never count twice
                key = conn.execute(_SPEND, {"reserved": reserved_usd, "cost": cost_usd,
                                            "key_id": key_id,
                                            "started": started_at}).fetchone()
                marker = budgets.soft_due(*key) if key else None
                if marker is not None:
                    claimed = conn.execute(_CLAIM, {"marker": marker,
                                                    "key_id": key_id}).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if done == 1:
            warn_if_over(usage_id, key_id, cost_usd, reserved_usd)
        if claimed:
            self._notify(budgets.notice(claimed))

    async def _soft(self, key: tuple, key_id: str) -> None:
        """PostgreSQL: claim the soft-limit notice when one is due (one statement)."""
        marker = budgets.soft_due(*key)
        if marker is not None:
            claimed = await self._pg.claim({"marker": marker, "key_id": key_id})
            if claimed:
                self._notify(budgets.notice(claimed))

    def _notify(self, body: dict | None) -> None:
        if body is not None and self.on_soft_limit is not None:
            self.on_soft_limit(body)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, fsync it, and have the next write start the
        WAL over: in a worker thread. A passive checkpoint does the bulk without holding
        writers up; under steady load it never finds the WAL idle, though, so the WAL would
        never start over and would grow without end. A restarting one then copies what was
        written meanwhile and blocks writers while it does (a few milliseconds a second, for
        which the loop's writes wait on the loop)."""
        if self._conn is None:
            return
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(_sqlite_path(self.ledger.url),
                                                 timeout=CHECKPOINT_EVERY_S,
                                                 check_same_thread=False)
        for mode in ("PASSIVE", "RESTART"):
            self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    async def aclose(self) -> None:
        for conn in (self._conn, self._checkpointer):
            if conn is not None:
                conn.close()
        self._conn = self._checkpointer = None
        if self._pg is not None:
            await self._pg.close()

    async def _begin(self) -> bool:
        """Take SQLite's write lock, waiting for it on the loop for up to `LOOP_WAIT_S`;
        False if it is still held elsewhere then, or the database refuses (`Ledger` then
        waits longer, or says why). No other step can run on the connection from here to
        the COMMIT: the caller does not await in between."""
        delay, waited = 0.0005, 0.0
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or waited >= LOOP_WAIT_S:
                    return False
            await asyncio.sleep(delay)
            waited, delay = waited + delay, min(2 * delay, 0.01)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _open(url: str) -> sqlite3.Connection | None:
    """The loop's connection to a SQLite ledger file in WAL mode, else None."""
    path = _sqlite_path(url)
    if path is None:
        return None
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    except sqlite3.OperationalError:
        mode = None
    if mode != "wal":  # WAL is set by Ledger's engine at its first connection
        conn.close()
        return None
    return conn
