"""The request path's ledger steps on PostgreSQL: each one statement in autocommit, on
connections the event loop drives itself (psycopg's async API). One round trip and no
thread per step, where `Ledger` takes a thread hop, a liveness ping and four or five
round trips (BEGIN, the statements, COMMIT).

- admission: the key's conditional UPDATE and the in-flight row's INSERT in one statement
  (a data-modifying WITH): the row exists only if the reservation was made, both
  committed before the upstream is called; the key's row lock orders concurrent
  admissions from any number of gateways, so a budget is never overspent;
- completion: the row's outcome and the reservation moved into `spent` in one statement,
  only while the row is still in flight (never counted twice).

A connection found broken is replaced and the statement sent once more: harmless for
these three (the lookup reads; a repeated admission fails on its usage id, which the
first one took, and then stands as done; a completion applies to an in-flight row only).
"""

from __future__ import annotations

import asyncio

import psycopg
import sqlalchemy as sa

from tokenomy.serve import budgets
from tokenomy.serve.ledger import KEY_COLUMNS, REFUSAL_COLUMNS, ROW_COLUMNS, api_keys, usage

POOL_SIZE = 16  # connections, beside Ledger's own (PostgreSQL allows 100 by default)

_LOOKUP = f"SELECT {', '.join(KEY_COLUMNS)} FROM {api_keys.name} WHERE key_hash = %s"
_KEY = f"SELECT {', '.join(REFUSAL_COLUMNS)} FROM {api_keys.name} WHERE id = %s"
_BOUNDARY, _ROLLED = budgets.reset_sql("%")
_PG_TYPES = {c: "integer" if c in ("prefix_chars", "message_count") else "text"
             for c in ROW_COLUMNS}  # a NULL parameter has no type of its own here
_ADMIT = f"""WITH reserved AS (
    UPDATE {api_keys.name} SET
      spent_usd = CASE WHEN {_ROLLED} THEN 0.0 ELSE spent_usd END,
      period_start = CASE WHEN {_ROLLED} THEN {_BOUNDARY} ELSE period_start END,
      reserved_usd = reserved_usd + %(estimate)s,
      window_count = CASE WHEN window_start <= %(fresh)s THEN 1 ELSE window_count + 1 END,
      window_start = CASE WHEN window_start <= %(fresh)s THEN %(now)s ELSE window_start END
    WHERE id = %(key_id)s AND revoked = false
      AND (budget_usd IS NULL OR (CASE WHEN {_ROLLED} THEN 0.0 ELSE spent_usd END)
           + reserved_usd + %(estimate)s <= budget_usd)
      AND (rpm_limit IS NULL OR window_start <= %(fresh)s OR window_count < rpm_limit)
    RETURNING id)
  INSERT INTO {usage.name} (id, key_id, endpoint, model, status, stream, started_at,
    reserved_usd, instance, prompt_tokens, completion_tokens, cached_tokens, cost_usd,
    {', '.join(ROW_COLUMNS)})
  SELECT %(id)s, id, %(endpoint)s, %(model)s, 'in_flight', %(stream)s, %(now)s,
    %(estimate)s, %(instance)s, 0, 0, 0, 0.0,
    {', '.join(f'CAST(%({c})s AS {_PG_TYPES[c]})' for c in ROW_COLUMNS)} FROM reserved"""
_FINISH = f"""WITH done AS (
    UPDATE {usage.name} SET status = %(status)s, cost_usd = %(cost_usd)s,
      deployment = %(deployment)s, finished_at = %(now)s, latency_s = %(now)s - started_at,
      prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s,
      cached_tokens = %(cached_tokens)s, token_counts = %(token_counts)s,
      ttft_s = %(ttft_s)s, price_basis = %(price_basis)s, route = %(route)s,
      cache = %(cache)s, error = %(error)s, finish_reason = %(finish_reason)s
    WHERE id = %(id)s AND status = 'in_flight'
    RETURNING reserved_usd, started_at)
  UPDATE {api_keys.name} SET reserved_usd = {api_keys.name}.reserved_usd - done.reserved_usd,
    spent_usd = {api_keys.name}.spent_usd + CASE
      WHEN done.started_at >= COALESCE({api_keys.name}.period_start, -1.0)
      THEN %(cost_usd)s ELSE 0.0 END
  FROM done WHERE {api_keys.name}.id = %(key_id)s
  RETURNING done.reserved_usd, {api_keys.name}.spent_usd, soft_limit_usd,
    soft_notified_period, period_start"""
_CLAIM = budgets.claim_sql(api_keys.name, "%")


class PostgresSteps:
    """lookup, admit and finish as single statements (see the module docstring)."""

    def __init__(self, url: str):
        self._conninfo = sa.engine.make_url(url).set(drivername="postgresql") \
            .render_as_string(hide_password=False)
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots: asyncio.Semaphore | None = None  # made on the loop, at first use

    async def lookup(self, digest: str) -> tuple | None:
        rows = await self._run(_LOOKUP, (digest,))
        return rows[0] if rows else None

    async def key(self, key_id: str) -> dict | None:
        rows = await self._run(_KEY, (key_id,))
        return dict(zip(REFUSAL_COLUMNS, rows[0], strict=True)) if rows else None

    async def admit(self, params: dict) -> bool:
        """True if admitted."""
        return await self._run(_ADMIT, params, rowcount=True) in (1, _TAKEN)

    async def finish(self, params: dict) -> tuple | None:
        """(the row's reservation, the key's spent_usd, soft_limit_usd,
        soft_notified_period, period_start) if it was in flight (and is now finished),
        else None."""
        rows = await self._run(_FINISH, params)
        return rows[0] if rows else None

    async def claim(self, params: dict) -> tuple | None:
        """The key's row if this caller claimed the period's soft-limit notice."""
        rows = await self._run(_CLAIM, params)
        return rows[0] if rows else None

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()

    async def _run(self, sql: str, params, rowcount: bool = False):
        """The statement's rows (or row count); _TAKEN when it was sent again after a
        broken connection and met the usage id its first sending had taken."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(POOL_SIZE)
        async with self._slots:
            again = False
            while True:
                # sent again: on a new connection (after a restart the idle ones are dead too)
                conn = (self._idle.pop() if self._idle and not again else
                        await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True))
                try:
                    cursor = await conn.execute(sql, params)
                    result = cursor.rowcount if rowcount else await cursor.fetchall()
                except psycopg.errors.UniqueViolation:
                    self._idle.append(conn)
                    if again:
                        return _TAKEN
                    raise
                except psycopg.OperationalError:
                    await conn.close()
                    if again or not conn.broken:
                        raise
                    again = True  # the server closed it (a restart, an idle timeout)
                    continue
                except BaseException:
                    await conn.close()  # cancelled or failed mid-statement: not reused
                    raise
                self._idle.append(conn)
                return result


_TAKEN = object()
