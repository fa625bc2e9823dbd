"""Budgets under concurrency: admission is one atomic update, on SQLite and on a real
PostgreSQL server, so 200 concurrent requests cannot spend past a key's budget."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway_harness import (
    PRICE_IN,
    PRICE_OUT,
    PROMPT,
    assert_error,
    chat,
    deployment,
    list_cost,
)
from tokenomy.serve.protocol import estimate_prompt_tokens


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budget.db'}"
    return request.getfixturevalue("postgres_url")


def test_budget_holds_under_200_concurrent_requests(start_upstream, start_gateway, db_url):
    fake = start_upstream(token_delay_s=0.01)
    gw = start_gateway(deployment("m", fake.url), db_url=db_url)
    content, max_tokens = "hello world how are you", 8
    estimate = estimate_prompt_tokens(content) * PRICE_IN + max_tokens * PRICE_OUT
    budget = 10 * estimate  # at most 10 reservations at once
    key_id, secret = gw.ledger.create_key("eve", budget_usd=budget)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200),
                                     timeout=60) as client:
            return await asyncio.gather(*(
                client.post(gw.url + "/v1/chat/completions",
                            headers={"Authorization": f"Bearer {secret}"},
                            json=chat(content, max_tokens=max_tokens))
                for _ in range(200)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    admitted, refused = codes.count(200), codes.count(429)
    assert admitted + refused == 200, f"unexpected statuses {set(codes)}"
    assert admitted >= 1 and refused >= 1, (admitted, refused)
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == \
        {"budget_exceeded"}

    key = gw.ledger.key(key_id)
    rows = gw.ledger.rows(key_id=key_id)
    assert key.spent_usd <= budget + 1e-12, f"spent {key.spent_usd} > budget {budget}"
    assert key.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert len(rows) == admitted and {r["status"] for r in rows} == {"ok"}
    assert key.spent_usd == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-9)
    assert all(r["cost_usd"] == pytest.approx(list_cost(r)) for r in rows)
    assert fake.behaviour.calls == admitted


def test_reservation_covers_a_dearer_fallback(start_upstream, start_gateway):
    bad, dear = start_upstream(fail_with=503), start_upstream()
    tenfold = {"input_cost_per_token": 10 * PRICE_IN, "output_cost_per_token": 10 * PRICE_OUT}
    gw = start_gateway(deployment("m", bad.url, max_retries=0),
                       deployment("m", dear.url) | {"model_info": tenfold})
    request = chat(max_tokens=4)
    cheap = estimate_prompt_tokens(PROMPT) * PRICE_IN + 4 * PRICE_OUT
    key_id, secret = gw.ledger.create_key("frank", budget_usd=2 * cheap)
    assert_error(gw.post(json=request, key=secret), 429, "rate_limit_error",
                 code="budget_exceeded")
    assert bad.behaviour.calls == dear.behaviour.calls == 0

    gw.ledger.update_key(key_id, budget_usd=10 * cheap)
    r = gw.post(json=request, key=secret)
    assert r.status_code == 200 and r.json()["tokenomy"]["deployment"] == "m#2"
    (row,) = gw.ledger.rows(key_id=key_id)
    assert row["cost_usd"] == pytest.approx(10 * list_cost(row))
    spent = gw.ledger.key(key_id).spent_usd
    assert spent == pytest.approx(row["cost_usd"]) and spent <= 10 * cheap
