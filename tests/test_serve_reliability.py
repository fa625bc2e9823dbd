"""The gateway as a real process: killed mid-load it loses no usage row and a restart's
recovery releases what was reserved; SIGTERM drains in-flight requests. And a schema
fuzz: no input makes it answer 5xx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest
import yaml

from fake_upstream import Behaviour, ServerThread, free_port
from fake_upstream import create_app as fake_app
from tokenomy.serve.ledger import Ledger

PRICE_IN, PRICE_OUT = 1e-6, 2e-6
WORDS = " ".join(f"w{i}" for i in range(60))  # the fake echoes up to max_tokens of these


@dataclass
class Outcome:
    max_tokens: int
    stream: bool
    ok: bool
    completion_tokens: int | None = None


@pytest.fixture
def upstream():
    b = Behaviour(token_delay_s=0.1)
    with ServerThread(fake_app(b)) as server:
        yield b, server.url


@contextlib.contextmanager
def gateway_process(tmp_path, upstream_url: str, drain_timeout_s: float = 30,
                    db_url: str | None = None, name: str = "gateway"):
    """`tokenomy serve` in a subprocess; yields (process, base URL, database URL)."""
    db_url = db_url or f"sqlite:///{tmp_path / 'usage.db'}"
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "m", "params": {
            "engine": "openai", "model": "fake", "api_base": upstream_url + "/v1",
            "max_retries": 0},
            "model_info": {"input_cost_per_token": PRICE_IN,
                           "output_cost_per_token": PRICE_OUT}}],
        "database_url": db_url,
        "general": {"drain_timeout_s": drain_timeout_s}}))
    port = free_port()
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tokenomy", "serve", "--config", str(config),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "the gateway did not start in 60 s"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield proc, url, db_url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


async def _request(client: httpx.AsyncClient, url: str, secret: str, max_tokens: int,
                   stream: bool) -> Outcome:
    body = {"model": "m", "messages": [{"role": "user", "content": WORDS}],
            "max_tokens": max_tokens, "stream": stream}
    headers = {"Authorization": f"Bearer {secret}"}
    outcome = Outcome(max_tokens, stream, ok=False)
    try:
        if not stream:
            r = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
            if r.status_code == 200:
                outcome.ok, outcome.completion_tokens = True, r.json()["usage"][
                    "completion_tokens"]
            return outcome
        body["stream_options"] = {"include_usage": True}
        async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                 headers=headers) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data:")]
        if r.status_code == 200 and lines and lines[-1] == "data: [DONE]":
            outcome.ok = True
            outcome.completion_tokens = json.loads(lines[-2][5:])["usage"]["completion_tokens"]
    except httpx.HTTPError:
        pass  # cut off: the gateway died under it
    return outcome


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100))


def _start(client: httpx.AsyncClient, url: str, secret: str,
           plan: list[tuple[int, bool]]) -> list[asyncio.Future]:
    return [asyncio.ensure_future(_request(client, url, secret, n, s)) for n, s in plan]


def _new_key(db_url: str) -> tuple[str, str]:
    ledger = Ledger(db_url)
    try:
        return ledger.create_key("load")
    finally:
        ledger.close()


def test_sigkill_mid_load_loses_no_usage_row(tmp_path, upstream):
    behaviour, upstream_url = upstream
    # 40 requests lasting 0.1 s to 4 s (one 0.1 s token each), half of them streamed
    plan = [(n, n % 2 == 0) for n in range(1, 41)]

    async def kill_at_half(proc, url: str, secret: str) -> list[Outcome]:
        async with _client() as client:
            tasks = _start(client, url, secret, plan)
            while sum(t.done() and t.result().ok for t in tasks) < 20:
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            return list(await asyncio.gather(*tasks))

    with gateway_process(tmp_path, upstream_url) as (proc, url, db_url):
        key_id, secret = _new_key(db_url)
        outcomes = asyncio.run(kill_at_half(proc, url, secret))
        assert proc.wait(10) == -signal.SIGKILL
    assert behaviour.calls == 40, "every request reached the upstream before the kill"
    ledger = Ledger(db_url)
    rows = ledger.rows(key_id=key_id)
    seen_ok = [o for o in outcomes if o.ok]
    assert 20 <= len(seen_ok) < 40, f"{len(seen_ok)} of 40 succeeded: not killed mid-load"
    assert all(o.completion_tokens == o.max_tokens for o in seen_ok)
    assert len(rows) == 40, f"{len(rows)} usage rows for 40 admitted requests"
    assert {r["status"] for r in rows} <= {"ok", "in_flight"}

    ok_rows = [r for r in rows if r["status"] == "ok"]
    ok_tokens = sorted(r["completion_tokens"] for r in ok_rows)
    missing = {o.max_tokens for o in seen_ok} - set(ok_tokens)
    assert not missing, f"requests the client saw succeed have no ok row: {missing}"
    assert len(set(ok_tokens)) == len(ok_tokens)  # one row per request
    for stream in (False, True):
        cut_off = [o for o in outcomes if o.stream == stream and not o.ok]
        ok_unseen = [r for r in ok_rows if r["stream"] == stream
                     and r["completion_tokens"] not in {o.max_tokens for o in seen_ok}]
        in_flight = [r for r in rows if r["stream"] == stream and r["status"] == "in_flight"]
        assert len(in_flight) == len(cut_off) - len(ok_unseen), (stream, len(in_flight))
    stranded = [r for r in rows if r["status"] == "in_flight"]
    assert stranded, "the kill cut off no request"

    key = ledger.key(key_id)
    assert key.spent_usd == pytest.approx(sum(r["cost_usd"] for r in ok_rows), rel=1e-9)
    assert all(r["cost_usd"] == pytest.approx(r["prompt_tokens"] * PRICE_IN
                                              + r["completion_tokens"] * PRICE_OUT)
               for r in ok_rows)
    assert key.reserved_usd == pytest.approx(sum(r["reserved_usd"] for r in stranded))
    assert key.reserved_usd > 0

    ledger.close()

    # a restart, right away: the dead gateway's rows are interrupted and released
    with gateway_process(tmp_path, upstream_url, name="restarted"):
        ledger = Ledger(db_url)
        after = {r["id"]: r for r in ledger.rows(key_id=key_id)}
        assert {after[r["id"]]["status"] for r in stranded} == {"interrupted"}
        assert all(after[r["id"]]["cost_usd"] == 0 for r in stranded)
        key = ledger.key(key_id)
        assert key.reserved_usd == pytest.approx(0.0, abs=1e-12)
        assert key.spent_usd == pytest.approx(sum(r["cost_usd"] for r in ok_rows), rel=1e-9)
        ledger.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killing_one_gateway_frees_its_rows_never_a_live_ones(tmp_path, upstream, backend,
                                                              request):
    """Two gateways share one ledger; A is killed with SIGKILL while both have requests in
    flight, then restarted: A's rows are interrupted and released within seconds, B's live
    reservations are untouched and its requests finish ok."""
    _, upstream_url = upstream
    db_url = (request.getfixturevalue("postgres_url") if backend == "postgresql"
              else f"sqlite:///{tmp_path / 'shared.db'}")

    async def run() -> tuple[list[Outcome], dict]:
        with gateway_process(tmp_path, upstream_url, db_url=db_url, name="a") as (a, url_a, _), \
                gateway_process(tmp_path, upstream_url, db_url=db_url, name="b") as (_, url_b, _):
            key_a, secret_a = _new_key(db_url)
            key_b, secret_b = _new_key(db_url)
            async with _client() as client:
                tasks_b = _start(client, url_b, secret_b, [(60, False), (60, True)] * 3)
                tasks_a = _start(client, url_a, secret_a, [(60, False), (60, True)] * 3)
                await _wait_in_flight(db_url, {key_a: 6, key_b: 6})
                a.send_signal(signal.SIGKILL)
                a.wait(10)
                with gateway_process(tmp_path, upstream_url, db_url=db_url, name="a2"):
                    ledger = Ledger(db_url)
                    seen = {"a": ledger.rows(key_id=key_a), "b": ledger.rows(key_id=key_b),
                            "key_a": ledger.key(key_a), "key_b": ledger.key(key_b)}
                    ledger.close()
                await asyncio.gather(*tasks_a)
                outcomes_b = list(await asyncio.gather(*tasks_b))
            ledger = Ledger(db_url)
            seen["b_after"] = ledger.rows(key_id=key_b)
            seen["key_b_after"] = ledger.key(key_b)
            ledger.close()
            return outcomes_b, seen

    outcomes_b, seen = asyncio.run(run())
    assert {r["status"] for r in seen["a"]} == {"interrupted"}, "A's rows not recovered"
    assert seen["key_a"].reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert {r["status"] for r in seen["b"]} == {"in_flight"}, "a live gateway's rows freed"
    assert seen["key_b"].reserved_usd == pytest.approx(sum(r["reserved_usd"]
                                                           for r in seen["b"]))
    assert all(o.ok for o in outcomes_b)
    assert {r["status"] for r in seen["b_after"]} == {"ok"}
    assert seen["key_b_after"].reserved_usd == pytest.approx(0.0, abs=1e-12)


async def _wait_in_flight(db_url: str, wanted: dict[str, int], timeout: float = 30) -> None:
    ledger = Ledger(db_url)
    try:
        deadline = time.monotonic() + timeout
        while any(len(ledger.rows(key_id=k, status="in_flight")) < n for k, n in wanted.items()):
            assert time.monotonic() < deadline, "requests never got in flight"
            await asyncio.sleep(0.05)
    finally:
        ledger.close()


def test_lease_expiry_recovers_another_hosts_gateway_only(tmp_path):
    """A replica on another host is judged by its lease: expired -> its rows recovered;
    renewed -> untouched, however old its requests."""
    import sqlalchemy as sa

    from tokenomy.serve.ledger import instances

    ledger = Ledger(f"sqlite:///{tmp_path / 'lease.db'}")
    key_id, _ = ledger.create_key("k", budget_usd=1.0)
    now = time.time()
    with ledger.engine.begin() as conn:
        for name, beat in (("gw_expired", now - 120), ("gw_alive", now - 1)):
            conn.execute(instances.insert().values(id=name, host="elsewhere/boot", pid=1,
                                                   started_at=now - 3600, heartbeat_at=beat))
    for owner in ("gw_expired", "gw_alive"):
        ledger.instance = owner
        ledger.admit(key_id, 0.01, endpoint="chat/completions", model="m", stream=False,
                     now=now - 3000)
    ledger.instance = None
    assert ledger.key(key_id).reserved_usd == pytest.approx(0.02)
    assert ledger.recover(lease_s=30) == 1
    status = {r["instance"]: r["status"] for r in ledger.rows(key_id=key_id)}
    assert status == {"gw_expired": "interrupted", "gw_alive": "in_flight"}
    assert ledger.key(key_id).reserved_usd == pytest.approx(0.01)
    with ledger.engine.connect() as conn:
        stopped = dict(conn.execute(sa.select(instances.c.id, instances.c.stopped_at)).all())
    assert stopped["gw_expired"] is not None and stopped["gw_alive"] is None
    assert ledger.recover(lease_s=30) == 0
    ledger.close()


def test_sigterm_drains_in_flight_requests(tmp_path, upstream):
    behaviour, upstream_url = upstream
    drain = 15.0
    plan = [(30, i % 2 == 0) for i in range(8)]  # ~3 s each

    async def terminate_under_load(proc, url: str, secret: str) -> tuple[list, float]:
        async with _client() as client:
            tasks = _start(client, url, secret, plan)
            while behaviour.calls < len(plan):
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as fresh:  # draining: no new connections
                with pytest.raises(httpx.ConnectError):
                    await fresh.get(url + "/healthz")
            assert not any(t.done() for t in tasks), "requests finished before the drain"
            return list(await asyncio.gather(*tasks)), signalled

    with gateway_process(tmp_path, upstream_url, drain_timeout_s=drain) as (proc, url,
                                                                             db_url):
        key_id, secret = _new_key(db_url)
        outcomes, signalled = asyncio.run(terminate_under_load(proc, url, secret))
        assert proc.wait(drain) == 0, (tmp_path / "gateway.log").read_text()
        assert time.monotonic() - signalled < drain
    assert all(o.ok and o.completion_tokens == 30 for o in outcomes), outcomes
    ledger = Ledger(db_url)
    rows = ledger.rows(key_id=key_id)
    assert [r["status"] for r in rows] == ["ok"] * len(plan)
    assert ledger.key(key_id).reserved_usd == pytest.approx(0.0, abs=1e-12)
    ledger.close()


# -- schema fuzz ---------------------------------------------------------------------------
@pytest.fixture
def live_gateway(tmp_path):
    """The gateway app in-process in front of an instant fake upstream."""
    from tokenomy.serve.app import GatewayState, Upstream, create_app
    from tokenomy.serve.config import GatewayConfig

    with ServerThread(fake_app(Behaviour())) as up:
        config = GatewayConfig.model_validate({
            "model_list": [{"model_name": "m", "params": {
                "engine": "openai", "model": "fake", "api_base": up.url + "/v1",
                "max_retries": 0},
                "model_info": {"input_cost_per_token": PRICE_IN,
                               "output_cost_per_token": PRICE_OUT}}],
            "database_url": f"sqlite:///{tmp_path / 'fuzz.db'}"})
        state = GatewayState(config, {d.id: Upstream(d, d.params.api_base, d.params.model)
                                      for d in config.model_list})
        with ServerThread(create_app(state)) as gateway:
            yield gateway.url, state


def test_fuzzed_requests_never_get_a_server_error(live_gateway):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error

    url, state = live_gateway
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions",
                                                "POST /v1/completions", "GET /v1/models"}
    for operation in operations:
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.body:  # only a body can be made invalid
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            @settings(max_examples=40, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), served=st.booleans())
            def fuzz(case, served):
                if served and isinstance(case.body, dict):
                    case.body["model"] = "m"  # reach the upstream, not only the 404
                response = case.call()
                case.validate_response(response, checks=[not_a_server_error])

            fuzz()
    statuses = {r["status"] for r in state.ledger.rows()}
    assert "ok" in statuses, "no fuzzed request reached the upstream"
    assert "in_flight" not in statuses
