"""Budgets under concurrency: admission is one atomic update, on SQLite and on a real
PostgreSQL server, so 200 concurrent requests cannot spend past a key's budget."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway_harness import (
    PRICE_IN,
    PRICE_OUT,
    assert_error,
    chat,
    deployment,
    list_cost,
)
from tokenomy.serve.protocol import ChatCompletionRequest


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budget.db'}"
    return request.getfixturevalue("postgres_url")


RARE = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀𓀁𓀂 ꙮ ﷽ 𝕏 " * 20  # 4-byte and wide characters: up to 1 token a byte


def _reserved(gw, request: dict) -> float:
    bound = next(iter(gw.state.bounds.values()))
    body = ChatCompletionRequest.model_validate(request)
    return bound.prompt_tokens(body) * PRICE_IN + bound.completion_tokens(body) * PRICE_OUT


@pytest.mark.parametrize("budget", [2e-5, 1e-3, 1.0], ids=["$0.00002", "$0.001", "$1"])
def test_budget_holds_under_200_concurrent_requests(start_upstream, start_gateway, db_url,
                                                    budget):
    """200 concurrent requests, half streamed, a third of them prompts of rare Unicode
    characters, against an upstream that counts a token for every prompt byte (the
    worst a real tokenizer does): spend never passes the budget."""
    fake = start_upstream(token_delay_s=0.01, byte_tokens=True)
    gw = start_gateway(deployment("m", fake.url), db_url=db_url)
    requests = [chat(RARE if i % 3 == 0 else "hello world how are you", max_tokens=8,
                     stream=i % 2 == 0, **({"stream_options": {"include_usage": True}}
                                           if i % 2 == 0 else {}))
                for i in range(200)]
    key_id, secret = gw.ledger.create_key("eve", budget_usd=budget)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200),
                                     timeout=60) as client:
            return await asyncio.gather(*(
                client.post(gw.url + "/v1/chat/completions",
                            headers={"Authorization": f"Bearer {secret}"}, json=request)
                for request in requests))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    admitted, refused = codes.count(200), codes.count(429)
    assert admitted + refused == 200, f"unexpected statuses {set(codes)}"
    cheapest = min(_reserved(gw, r) for r in requests)
    if budget < 200 * cheapest:  # not everything fits: some refused, at least one not
        assert refused >= 1 and (admitted >= 1 or budget < cheapest), (admitted, refused)
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} <= \
        {"budget_exceeded"}

    key = gw.ledger.key(key_id)
    rows = gw.ledger.rows(key_id=key_id)
    assert key.spent_usd <= budget + 1e-12, f"spent {key.spent_usd} > budget {budget}"
    assert key.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert len(rows) == admitted and {r["status"] for r in rows} <= {"ok"}
    assert key.spent_usd == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-9)
    assert all(r["cost_usd"] == pytest.approx(list_cost(r)) for r in rows)
    assert all(r["cost_usd"] <= r["reserved_usd"] + 1e-15 for r in rows), \
        "a request cost more than its reservation"
    assert fake.behaviour.calls == admitted


def test_reservation_bounds_a_worst_case_tokenizer(start_upstream, start_gateway):
    """320 rare characters with max_tokens 1 (the request that spent 7x a key's budget
    when the prompt was estimated at 3 characters a token)."""
    fake = start_upstream(byte_tokens=True)
    gw = start_gateway(deployment("m", fake.url))
    request = chat("𓀀" * 320, max_tokens=1)
    key_id, secret = gw.ledger.create_key("mallory", budget_usd=_reserved(gw, request))
    r = gw.post(json=request, key=secret)
    assert r.status_code == 200, r.text
    (row,) = gw.ledger.rows(key_id=key_id)
    assert row["prompt_tokens"] == 32 + 4 * 320
    assert row["cost_usd"] <= row["reserved_usd"]
    key = gw.ledger.key(key_id)
    assert key.spent_usd <= key.budget_usd
    assert_error(gw.post(json=request, key=secret), 429, "rate_limit_error",
                 code="budget_exceeded")


def test_unbounded_answer_reserves_what_the_deployment_can_generate(start_upstream,
                                                                    start_gateway):
    fake = start_upstream()
    dep = deployment("m", fake.url) | {"model_info": {
        "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT,
        "max_output_tokens": 500}}
    gw = start_gateway(dep)
    bound = next(iter(gw.state.bounds.values()))
    body = ChatCompletionRequest.model_validate(chat())
    assert bound.completion_tokens(body) == 500
    assert bound.completion_tokens(ChatCompletionRequest.model_validate(
        chat(max_tokens=9000))) == 500  # the deployment cannot give more
    assert bound.completion_tokens(ChatCompletionRequest.model_validate(
        chat(max_tokens=7))) == 7


def test_reservation_covers_a_dearer_fallback(start_upstream, start_gateway):
    bad, dear = start_upstream(fail_with=503), start_upstream()
    tenfold = {"input_cost_per_token": 10 * PRICE_IN, "output_cost_per_token": 10 * PRICE_OUT}
    gw = start_gateway(deployment("m", bad.url, max_retries=0),
                       deployment("m", dear.url) | {"model_info": tenfold})
    request = chat(max_tokens=4)
    cheap = _reserved(gw, request)
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
