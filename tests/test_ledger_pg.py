"""The request path's ledger steps on a real PostgreSQL (tokenomy.serve.ledger_pg): rows
committed before the upstream call survive a gateway dying mid-request and are recovered,
one usage id is finished once however many completions race for it, dropped connections
are replaced (all of them, as after a server restart), and costs add up bit for bit.
Budget periods, attribution and budgets under load: test_budget_periods.py,
test_attribution.py and test_serve_budgets.py."""

from __future__ import annotations

import asyncio
import socket
import uuid

import psycopg
import pytest
import sqlalchemy as sa

from tokenomy.serve import budgets
from tokenomy.serve.ledger import RATE_WINDOW_S, ROW_COLUMNS, Ledger, instances
from tokenomy.serve.ledger_pg import PostgresSteps

NOW = 1_750_000_000.0


@pytest.fixture(scope="module")
def ledger(postgres_url):
    led = Ledger(postgres_url)
    yield led
    led.close()


def _admission(key_id: str, estimate: float, *, usage_id: str | None = None,
               instance: str | None = None, now: float = NOW) -> dict:
    """PostgresSteps.admit's parameters, as LoopLedger.admit builds them."""
    return {"id": usage_id or uuid.uuid4().hex, "key_id": key_id, "endpoint": "e",
            "model": "m", "stream": False, "now": now, "fresh": now - RATE_WINDOW_S,
            "estimate": estimate, "instance": instance, **budgets.params(now),
            **dict.fromkeys(ROW_COLUMNS)}


def _completion(usage_id: str, key_id: str, cost: float, now: float = NOW + 1) -> dict:
    """PostgresSteps.finish's parameters, as LoopLedger.finish builds them."""
    return {"id": usage_id, "key_id": key_id, "status": "ok", "cost_usd": cost,
            "now": now, "deployment": "d", "prompt_tokens": 3, "completion_tokens": 4,
            "cached_tokens": 0, "token_counts": None, "ttft_s": None, "price_basis": None,
            "route": None, "cache": None, "error": None, "finish_reason": "stop"}


def _drop_connections(url: str) -> int:
    """End every other session on the server, as a restart or an idle timeout does."""
    with psycopg.connect(PostgresSteps(url)._conninfo, autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> "
            "pg_backend_pid() AND datname = current_database()").fetchall())


def test_a_row_admitted_before_a_crash_is_recovered_and_never_charged(ledger, postgres_url):
    """The in-flight row and the reservation are committed when admit returns; a gateway
    that dies then leaves them for another to recover, and its late completion (a
    process that was only frozen) counts nothing."""
    key_id, _ = ledger.create_key("crash", budget_usd=1.0)
    dead = Ledger(postgres_url)
    dead.register()
    usage_id = uuid.uuid4().hex

    async def admit_then_die():
        steps = PostgresSteps(postgres_url)
        assert await steps.admit(_admission(key_id, 0.25, usage_id=usage_id,
                                            instance=dead.instance))
        await steps.close()  # the process dies: no finish

    asyncio.run(admit_then_die())
    dead.close()
    row, = ledger.rows(id=usage_id)
    assert (row["status"], row["reserved_usd"], row["instance"]) == \
        ("in_flight", 0.25, dead.instance)
    assert ledger.key(key_id).reserved_usd == 0.25

    with ledger.engine.begin() as conn:  # its lease runs out
        conn.execute(instances.update().where(instances.c.id == dead.instance)
                     .values(heartbeat_at=0.0))
    survivor = Ledger(postgres_url)
    survivor.register()
    try:
        assert survivor.recover(lease_s=30) >= 1
    finally:
        survivor.deregister()
        survivor.close()
    row, = ledger.rows(id=usage_id)
    assert (row["status"], row["cost_usd"]) == ("interrupted", 0.0)
    key = ledger.key(key_id)
    assert (key.reserved_usd, key.spent_usd) == (0.0, 0.0)

    async def late_finish():
        steps = PostgresSteps(postgres_url)
        try:
            return await steps.finish(_completion(usage_id, key_id, 0.2))
        finally:
            await steps.close()

    assert asyncio.run(late_finish()) is None, "a recovered row was finished again"
    key = ledger.key(key_id)
    assert (key.reserved_usd, key.spent_usd) == (0.0, 0.0)


def test_concurrent_finishes_of_one_usage_id_count_once(ledger, postgres_url):
    key_id, _ = ledger.create_key("race", budget_usd=1.0)
    usage_id = uuid.uuid4().hex
    costs = [0.01 * (i + 1) for i in range(8)]

    async def race():
        steps = PostgresSteps(postgres_url)
        try:
            assert await steps.admit(_admission(key_id, 0.5, usage_id=usage_id))
            results = await asyncio.gather(*(steps.finish(_completion(usage_id, key_id, c))
                                             for c in costs))
            return results, len(steps._idle)
        finally:
            await steps.close()

    results, connections = asyncio.run(race())
    assert connections > 1, "the finishes did not run on separate connections"
    won = [(cost, r) for cost, r in zip(costs, results, strict=True) if r is not None]
    assert len(won) == 1, f"{len(won)} of {len(costs)} finishes applied"
    cost, (reserved, spent, *_) = won[0]
    assert (reserved, spent) == (0.5, cost)
    row, = ledger.rows(id=usage_id)
    assert (row["status"], row["cost_usd"]) == ("ok", cost)
    key = ledger.key(key_id)
    assert (key.spent_usd, key.reserved_usd) == (cost, 0.0)


def test_every_dropped_connection_is_replaced(ledger, postgres_url):
    """After a restart every idle connection is dead: each step still succeeds, on a new
    connection, however many dead ones the pool held (it used to retry on the next dead
    one, and fail)."""
    key_id, _ = ledger.create_key("restart", budget_usd=1.0)

    async def run():
        steps = PostgresSteps(postgres_url)
        try:
            await asyncio.gather(*(steps._run("SELECT pg_sleep(0.05)", ()) for _ in range(4)))
            assert len(steps._idle) == 4
            assert _drop_connections(postgres_url) >= 4
            assert await steps.key(key_id) is not None
            ids = [uuid.uuid4().hex for _ in range(3)]
            for usage_id in ids:
                assert await steps.admit(_admission(key_id, 0.1, usage_id=usage_id))
            for usage_id in ids:
                assert await steps.finish(_completion(usage_id, key_id, 0.05)) is not None
            assert not any(conn.closed for conn in steps._idle)
        finally:
            await steps.close()

    asyncio.run(run())
    key = ledger.key(key_id)
    assert key.spent_usd == pytest.approx(0.15, rel=1e-12)
    assert key.reserved_usd == pytest.approx(0.0, abs=1e-12)


def test_an_admission_sent_again_after_a_dropped_connection_stands_once(ledger,
                                                                        postgres_url):
    """The admission that committed but whose answer was lost is sent again on a new
    connection: it meets its own usage id and stands as done, reserved once. Without a
    dropped connection a repeated usage id is an error."""
    key_id, _ = ledger.create_key("again", budget_usd=1.0)
    params = _admission(key_id, 0.3)

    async def run():
        steps = PostgresSteps(postgres_url)
        try:
            assert await steps.admit(params)
            with pytest.raises(psycopg.errors.UniqueViolation):
                await steps.admit(params)
            _drop_connections(postgres_url)
            assert await steps.admit(params)  # broken, then sent again: its id taken
        finally:
            await steps.close()

    asyncio.run(run())
    assert len(ledger.rows(id=params["id"])) == 1
    assert ledger.key(key_id).reserved_usd == 0.3, "the admission was reserved twice"


def test_an_unreachable_server_is_an_operational_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed

    async def run():
        steps = PostgresSteps(f"postgresql://postgres@127.0.0.1:{port}/postgres"
                              "?connect_timeout=5")
        for _ in range(2):  # and the slot is given back
            with pytest.raises(psycopg.OperationalError, match=str(port)):
                await steps.lookup("0" * 64)

    asyncio.run(asyncio.wait_for(run(), 10))


def test_a_cancelled_step_closes_its_connection(ledger, postgres_url):
    async def run():
        steps = PostgresSteps(postgres_url)
        try:
            await steps.key("anonymous")
            conn, = steps._idle
            task = asyncio.create_task(steps._run("SELECT pg_sleep(2)", ()))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert conn.closed and not steps._idle, "a cancelled connection kept"
            assert await asyncio.wait_for(steps.key("anonymous"), 1) is not None
        finally:
            await steps.close()

    asyncio.run(run())


def test_costs_are_stored_and_summed_bit_for_bit(ledger, postgres_url):
    """float8 end to end: each row's cost is the float given, the key's spend the same
    left-to-right sum Python makes, integers included."""
    key_id, _ = ledger.create_key("exact", budget_usd=1e6)
    costs = [0.1, 0.2, 0.3, 1e-7, 3.3e-6, 123.456789, 0, 2, 1 / 3, 7.77e-12]

    async def run():
        steps = PostgresSteps(postgres_url)
        try:
            ids = []
            for i, cost in enumerate(costs):
                params = _admission(key_id, float(cost) * 1.5 + 1e-9, now=NOW + i)
                assert await steps.admit(params)
                assert await steps.finish(_completion(params["id"], key_id, cost,
                                                      now=NOW + i + 0.5)) is not None
                ids.append(params["id"])
            return ids
        finally:
            await steps.close()

    ids = asyncio.run(run())
    expected = 0.0
    for cost in costs:
        expected += cost
    assert [ledger.rows(id=i)[0]["cost_usd"] for i in ids] == [float(c) for c in costs]
    key = ledger.key(key_id)
    assert key.spent_usd == expected, f"{key.spent_usd!r} != {expected!r}"
    assert key.reserved_usd == pytest.approx(0.0, abs=1e-12)
    with ledger.engine.connect() as conn:  # as `tokenomy usage` sums them
        total = conn.execute(sa.text("SELECT sum(cost_usd) FROM tokenomy_usage "
                                     "WHERE key_id = :k"), {"k": key_id}).scalar()
    assert total == pytest.approx(expected, rel=1e-15)
