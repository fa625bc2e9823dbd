"""Budgets that reset (daily, weekly, monthly on UTC boundaries) with a controllable
clock, on SQLite and a real PostgreSQL: the reset happens inside the admission statement,
a reservation in flight across it is charged to the period it was admitted in, 200
concurrent requests across a reset never overspend either period, and the soft limit's
webhook fires once per period."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import threading
import time

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI, Request

from gateway_harness import assert_error, chat, deployment, wait_for
from tokenomy.cli import commands
from tokenomy.serve import budgets
from tokenomy.serve.ledger import AdmissionError, Ledger
from tokenomy.serve.ledger_fast import LoopLedger

CLI = commands()


def _ts(*args) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'periods.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.parametrize(("now", "day", "week", "month"), [
    (_ts(2024, 1, 3, 15), _ts(2024, 1, 3), _ts(2024, 1, 1), _ts(2024, 1, 1)),  # a Wednesday
    (_ts(2024, 3, 10, 23, 59, 59), _ts(2024, 3, 10), _ts(2024, 3, 4), _ts(2024, 3, 1)),
    (_ts(2026, 1, 1, 0, 0, 0), _ts(2026, 1, 1), _ts(2025, 12, 29), _ts(2026, 1, 1)),
    (_ts(2024, 2, 29, 12), _ts(2024, 2, 29), _ts(2024, 2, 26), _ts(2024, 2, 1)),
], ids=["wednesday", "sunday-night", "new-year-thursday", "leap-day"])
def test_period_boundaries_are_utc_calendar_ones(now, day, week, month):
    assert budgets.boundaries(now) == {"daily": day, "weekly": week, "monthly": month}


def _reserved(gw, request: dict) -> float:
    from gateway_harness import PRICE_IN, PRICE_OUT
    from tokenomy.serve.protocol import ChatCompletionRequest

    bound = next(iter(gw.state.bounds.values()))
    body = ChatCompletionRequest.model_validate(request)
    return bound.prompt_tokens(body) * PRICE_IN + bound.completion_tokens(body) * PRICE_OUT


NEXT = {"daily": lambda t: t + 86_400, "weekly": lambda t: t + 7 * 86_400,
        "monthly": lambda t: _ts(2024, 2, 1, 0, 0, 1)}


@pytest.mark.parametrize("period", ["daily", "weekly", "monthly"])
def test_budget_resets_at_the_boundary(start_upstream, start_gateway, db_url, period):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url), db_url=db_url)
    clock = gw.ledger.clock = Clock(_ts(2024, 1, 10, 9))  # a Wednesday in January
    budget = 1.2 * _reserved(gw, chat(max_tokens=4))  # ~10 requests' real cost over one
    key_id, secret = gw.ledger.create_key("p", budget_usd=budget, period=period)
    assert gw.ledger.key(key_id).period_start == budgets.boundaries(clock.t)[period]
    admitted = 0
    for _ in range(40):
        r = gw.post(json=chat(max_tokens=4), key=secret)
        if r.status_code == 429:
            break
        assert r.status_code == 200, r.text
        admitted += 1
    assert 1 <= admitted < 40, admitted
    err = assert_error(r, 429, "rate_limit_error", code="budget_exceeded")
    unit = {"daily": "day", "weekly": "week", "monthly": "month"}[period]
    assert f"spent this {unit} $" in err["message"], err
    spent = gw.ledger.key(key_id).spent_usd
    assert 0 < spent <= budget

    clock.t = NEXT[period](clock.t)  # the next period: nothing written yet, spent shows 0
    listed = CliRunner().invoke(CLI, ["keys", "list", "--db", db_url, "--json"])
    assert listed.exit_code == 0, listed.output
    # `keys list` reads the real clock: it shows the stored spend of the (real) period
    (row,) = [k for k in json.loads(listed.output) if k["id"] == key_id]
    assert row["budget_period"] == period and row["remaining_usd"] is not None
    assert gw.ledger.key(key_id).spent_now(clock.t) == 0.0

    r = gw.post(json=chat(max_tokens=4), key=secret)
    assert r.status_code == 200, r.text
    key = gw.ledger.key(key_id)
    assert key.period_start == budgets.boundaries(clock.t)[period] > _ts(2024, 1, 10)
    (last,) = [x for x in gw.ledger.rows(key_id=key_id) if x["started_at"] == clock.t]
    assert key.spent_usd == pytest.approx(last["cost_usd"]) and key.reserved_usd == 0


class _Steps:
    """admit/finish on one of the three ledger implementations."""

    def __init__(self, ledger: Ledger, kind: str):
        self.ledger, self.kind = ledger, kind
        self.loop = LoopLedger(ledger, self._offload) if kind != "sqlalchemy" else None

    @staticmethod
    async def _offload(fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def admit(self, key_id: str, estimate: float) -> tuple[str, float, float]:
        now = self.ledger.clock()
        if self.loop is None:
            uid = self.ledger.admit(key_id, estimate, endpoint="e", model="m", stream=False,
                                    now=now)
        else:
            uid = await self.loop.admit(key_id, estimate, endpoint="e", model="m",
                                        stream=False, now=now)
        return uid, estimate, now

    async def finish(self, key_id: str, ticket, cost: float) -> None:
        uid, reserved, started = ticket
        if self.loop is None:
            self.ledger.finish(uid, key_id, status="ok", cost_usd=cost)
        else:
            await self.loop.finish(uid, key_id, reserved_usd=reserved, started_at=started,
                                   status="ok", cost_usd=cost)


@pytest.mark.parametrize("kind", ["sqlalchemy", "loop"])
def test_in_flight_across_the_reset_is_charged_to_its_period(db_url, kind):
    clock = Clock(_ts(2024, 5, 6, 23, 59))
    ledger = Ledger(db_url, clock=clock)
    key_id, _ = ledger.create_key("night", budget_usd=1.0, period="daily")
    steps = _Steps(ledger, kind)

    async def scenario():
        old = await steps.admit(key_id, 0.5)
        await steps.finish(key_id, await steps.admit(key_id, 0.25), 0.2)
        clock.t = _ts(2024, 5, 7, 0, 1)  # a new day; `old` still in flight
        new = await steps.admit(key_id, 0.5)  # the reset: spent 0, `old` still reserved
        key = ledger.key(key_id)
        assert key.spent_usd == 0 and key.reserved_usd == pytest.approx(1.0)
        with pytest.raises(AdmissionError) as refused:  # old's reservation still counts
            await steps.admit(key_id, 0.01)
        assert refused.value.code == "budget_exceeded"
        await steps.finish(key_id, old, 0.4)  # charged to yesterday: not to today
        key = ledger.key(key_id)
        assert key.spent_usd == 0 and key.reserved_usd == pytest.approx(0.5)
        await steps.finish(key_id, new, 0.3)
        key = ledger.key(key_id)
        assert key.spent_usd == pytest.approx(0.3) and key.reserved_usd == pytest.approx(0)
        if steps.loop is not None:
            await steps.loop.aclose()

    asyncio.run(scenario())
    rows = {r["id"]: r for r in ledger.rows(key_id=key_id)}
    assert sorted(r["cost_usd"] for r in rows.values()) == [0.2, 0.3, 0.4]
    ledger.close()


class SwitchingClock:
    """Before the switch, the old period; after `after` readings, the new one."""

    def __init__(self, old: float, new: float, after: int):
        self.old, self.new, self.after = old, new, after
        self.readings = itertools.count()

    def __call__(self) -> float:
        return self.old if next(self.readings) < self.after else self.new


def test_never_overspent_under_200_concurrent_requests_across_a_reset(
        start_upstream, start_gateway, db_url):
    fake = start_upstream(token_delay_s=0.01)
    gw = start_gateway(deployment("m", fake.url), db_url=db_url)
    boundary = _ts(2024, 7, 1)
    gw.ledger.clock = Clock(boundary - 120)
    budget = 8 * _reserved(gw, chat("request 100", max_tokens=8))
    key_id, secret = gw.ledger.create_key("burst", budget_usd=budget, period="monthly")
    assert gw.post(json=chat(max_tokens=8), key=secret).status_code == 200  # some spent
    gw.ledger.clock = SwitchingClock(boundary - 1, boundary + 1, after=180)

    async def burst():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200),
                                     timeout=60) as client:
            return await asyncio.gather(*(
                client.post(gw.url + "/v1/chat/completions", json=chat(
                    f"request {i}", max_tokens=8, stream=i % 2 == 0),
                    headers={"Authorization": f"Bearer {secret}"}) for i in range(200)))

    codes = [r.status_code for r in asyncio.run(burst())]
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, set(codes)
    rows = gw.ledger.rows(key_id=key_id)
    assert len(rows) == codes.count(200) + 1 and {r["status"] for r in rows} == {"ok"}
    old = [r for r in rows if r["started_at"] < boundary]
    new = [r for r in rows if r["started_at"] >= boundary]
    assert len(old) >= 2 and new, (len(old), len(new))  # admitted in both periods
    assert sum(r["cost_usd"] for r in old) <= budget + 1e-12
    assert sum(r["cost_usd"] for r in new) <= budget + 1e-12
    key = gw.ledger.key(key_id)
    assert key.period_start == boundary and key.reserved_usd == pytest.approx(0, abs=1e-12)
    assert key.spent_usd == pytest.approx(sum(r["cost_usd"] for r in new), rel=1e-9)
    assert all(r["cost_usd"] <= r["reserved_usd"] + 1e-15 for r in rows)


@pytest.fixture
def webhook():
    from fake_upstream import ServerThread

    received: list[dict] = []
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request):
        with lock:
            received.append(await request.json())
        return {"ok": True}

    with ServerThread(app) as server:
        yield server.url + "/hook", received


def test_soft_limit_fires_once_per_period(start_upstream, start_gateway, db_url, webhook):
    url, received = webhook
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url), db_url=db_url)
    clock = gw.ledger.clock = Clock(_ts(2024, 9, 2, 8))
    key_id, secret = gw.ledger.create_key("soft", budget_usd=1.0, period="weekly",
                                          soft_limit_usd=1e-6, webhook_url=url)

    async def burst(n: int):
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(
                gw.url + "/v1/chat/completions", json=chat(max_tokens=4),
                headers={"Authorization": f"Bearer {secret}"}) for _ in range(n)))

    assert {r.status_code for r in asyncio.run(burst(20))} == {200}
    wait_for(lambda: received, what="the soft-limit webhook")
    time.sleep(0.5)
    assert len(received) == 1, received
    body = received[0]
    assert body["key_id"] == key_id and body["name"] == "soft" and body["period"] == "weekly"
    assert body["soft_limit_usd"] == 1e-6 and body["budget_usd"] == 1.0
    assert body["spent_usd"] >= 1e-6 and body["period_start"] == _ts(2024, 9, 2)

    clock.t += 7 * 86_400  # next week: once more
    assert {r.status_code for r in asyncio.run(burst(10))} == {200}
    wait_for(lambda: len(received) == 2, what="the next period's webhook")
    time.sleep(0.5)
    assert len(received) == 2 and received[1]["period_start"] == _ts(2024, 9, 9)


def test_a_failing_webhook_never_affects_requests(start_upstream, start_gateway, caplog):
    from fake_upstream import free_port

    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url))
    key_id, secret = gw.ledger.create_key(
        "dead", soft_limit_usd=0.0, webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    for _ in range(3):
        assert gw.post(json=chat(), key=secret).status_code == 200
    wait_for(lambda: "soft-limit webhook" in caplog.text, what="the webhook failure logged")
    assert len(gw.ledger.rows(key_id=key_id)) == 3


def test_keys_cli_periods_soft_limit_and_tags(tmp_path):
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    r = CliRunner().invoke(CLI, ["keys", "create", "bot", "--budget", "2", "--period", "daily",
                                 "--soft-limit", "1.5", "--webhook", "https://h.example/x",
                                 "--tag", "feature:search", "--tag", "team:a", "--db", db])
    assert r.exit_code == 0, r.output
    key_id = r.output.split()[0]
    r = CliRunner().invoke(CLI, ["keys", "update", key_id, "--period", "monthly",
                                 "--tag", "feature:chat", "--db", db])
    assert r.exit_code == 0, r.output
    listed = CliRunner().invoke(CLI, ["keys", "list", "--db", db, "--json"])
    (key,) = [k for k in json.loads(listed.output) if k["id"] == key_id]
    assert key["budget_period"] == "monthly" and key["tags"] == ["feature:chat"]
    assert key["soft_limit_usd"] == 1.5 and key["remaining_usd"] == 2.0
    assert key["period_start"] == budgets.boundaries(time.time())["monthly"]
    table = CliRunner().invoke(CLI, ["keys", "list", "--db", db], env={"COLUMNS": "250"})
    assert "monthly" in table.output and "feature:chat" in table.output, table.output
    r = CliRunner().invoke(CLI, ["keys", "update", key_id, "--clear-tags", "--period", "none",
                                 "--db", db])
    assert r.exit_code == 0, r.output
    key = Ledger(db, create=False).key(key_id)
    assert key.tags == () and key.budget_period is None and key.period_start is None


BAD_KEYS = [  # (id, argv after `keys`, fragment of the one-line error)
    ("period-unknown", ["create", "a", "--period", "yearly"], "'yearly' is not one of"),
    ("soft-negative", ["create", "a", "--soft-limit", "-1"], "--soft-limit"),
    ("webhook-not-http", ["create", "a", "--webhook", "ftp://x"], "not an http(s) URL"),
    ("tag-too-long", ["create", "a", "--tag", "t" * 101], "at most 100"),
    ("tag-control", ["create", "a", "--tag", "a\tb"], "control character"),
    ("too-many-tags", ["create", "a", *[f"--tag=t{i}" for i in range(33)]], "at most 32"),
    ("tags-and-clear", ["update", "key_x", "--tag", "a", "--clear-tags"], "not both"),
    ("update-nothing", ["update", "key_x"], "nothing to update"),
]


@pytest.mark.parametrize("argv,fragment", [b[1:] for b in BAD_KEYS],
                         ids=[b[0] for b in BAD_KEYS])
def test_bad_key_options_are_one_clear_error(tmp_path, argv, fragment):
    db = f"sqlite:///{tmp_path / 'bad.db'}"
    Ledger(db).close()
    r = CliRunner().invoke(CLI, ["keys", *argv, "--db", db])
    assert r.exit_code in (1, 2) and fragment in r.output, r.output
    assert "Traceback" not in r.output
    ledger = Ledger(db, create=False)
    assert ledger.key("anonymous") is not None and len(ledger.keys()) == 1


def test_feature_label_is_capped():
    from tokenomy.serve.metrics import MAX_FEATURES, Metrics

    m = Metrics()
    labels = [m.feature(f"f{i}") for i in range(MAX_FEATURES + 10)]
    assert labels[:MAX_FEATURES] == [f"f{i}" for i in range(MAX_FEATURES)]
    assert set(labels[MAX_FEATURES:]) == {"other"} and m.feature("f3") == "f3"
    assert m.feature(None) == ""
