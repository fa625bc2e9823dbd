"""The gateway's own logic against a deterministic fake upstream on 127.0.0.1: the
official `openai` client, OpenAI error shapes, retries and fallbacks, cancellation on
client disconnect, and the exact cache. Budgets: test_serve_budgets.py."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from fake_upstream import free_port
from gateway_harness import (
    PROMPT,
    assert_error,
    chat,
    deployment,
    list_cost,
    wait_for,
)


# -- 1. the official client, metering, /v1/models, /healthz, /metrics ------------------
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_openai_client_is_served_and_metered(gateway, endpoint, stream):
    client = gateway.client()
    if endpoint == "chat/completions":
        kwargs = {"model": "m", "messages": [{"role": "user", "content": PROMPT}],
                  "max_tokens": 4}
        create = client.chat.completions.create
    else:
        kwargs = {"model": "m", "prompt": PROMPT, "max_tokens": 4}
        create = client.completions.create
    if stream:
        chunks = list(create(**kwargs, stream=True, stream_options={"include_usage": True}))
        pieces = [(c.choices[0].delta.content if endpoint == "chat/completions"
                   else c.choices[0].text) or "" for c in chunks if c.choices]
        text, usage = "".join(pieces), chunks[-1].usage
    else:
        response = create(**kwargs)
        choice = response.choices[0]
        text = choice.message.content if endpoint == "chat/completions" else choice.text
        usage = response.usage
        assert response.model == "m"
    assert text == "echo: the quick brown"

    (row,) = gateway.ledger.rows()
    assert (row["status"], row["endpoint"], row["model"], row["deployment"], row["stream"]) == \
        ("ok", endpoint, "m", "m", stream)
    assert (row["prompt_tokens"], row["completion_tokens"]) == \
        (usage.prompt_tokens, usage.completion_tokens) == (row["prompt_tokens"], 4)
    assert row["token_counts"] == "usage" and row["price_basis"] == "list price"
    assert row["cost_usd"] == pytest.approx(list_cost(row), rel=1e-9)
    assert row["cost_usd"] > 0
    key = gateway.ledger.key("anonymous")
    assert key.spent_usd == pytest.approx(row["cost_usd"], rel=1e-9)
    assert key.reserved_usd == pytest.approx(0.0, abs=1e-12)


def test_stream_usage_chunk_only_when_asked_but_always_metered(gateway, upstream):
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      json=chat(stream=True, max_tokens=3)) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines()
                  if line.startswith("data:") and line != "data: [DONE]"]
    assert r.status_code == 200
    assert not any(e.get("usage") for e in events), "usage chunk the client did not ask for"
    assert upstream.behaviour.bodies[-1]["stream_options"] == {"include_usage": True}
    (row,) = gateway.ledger.rows()
    assert row["token_counts"] == "usage" and row["completion_tokens"] == 3
    assert row["cost_usd"] == pytest.approx(list_cost(row))


def test_stream_without_upstream_usage_is_counted(start_upstream, start_gateway):
    fake = start_upstream(stream_usage=False)
    gw = start_gateway(deployment("m", fake.url))
    chunks = list(gw.client().chat.completions.create(
        **chat(max_tokens=5), stream=True, stream_options={"include_usage": True}))
    # asked for and not sent by the engine: the gateway answers with its own count
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [5]
    (row,) = gw.ledger.rows()
    assert row["token_counts"] == "counted"
    assert row["completion_tokens"] == 5  # one per content chunk
    assert row["prompt_tokens"] == len(PROMPT.split())  # the upstream's /extras/tokenize
    assert row["cost_usd"] == pytest.approx(list_cost(row))


def test_models_healthz_and_metrics(gateway):
    assert [m.id for m in gateway.client().models.list()] == ["m"]
    health = httpx.get(gateway.url + "/healthz").json()
    assert health == {"status": "ok", "deployments": ["m"], "in_flight": {"m": 0},
                      "cache": {"hits": {"exact": 0, "semantic": 0}, "misses": 0,
                                "entries": 0, "backend": "memory"}}

    gateway.client().chat.completions.create(**chat(max_tokens=2))
    (row,) = gateway.ledger.rows()
    r = httpx.get(gateway.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert gateway.metric("tokenomy_requests_total", model="m", deployment="m",
                          status="ok") == 1
    assert gateway.metric("tokenomy_tokens_total", deployment="m",
                          kind="completion") == 2
    assert gateway.metric("tokenomy_tokens_total", deployment="m",
                          kind="prompt") == row["prompt_tokens"]
    assert gateway.metric("tokenomy_cost_usd_total", deployment="m") == \
        pytest.approx(row["cost_usd"])
    assert gateway.metric("tokenomy_request_latency_seconds_count", deployment="m") == 1


# -- 2. OpenAI error shapes ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "request_kwargs", "param"), [
    ("/v1/chat/completions", {"content": b"{not json", "headers": {
        "content-type": "application/json"}}, None),
    ("/v1/chat/completions", {"json": {"model": "m"}}, "messages"),
    ("/v1/chat/completions", {"json": chat() | {"messages": []}}, "messages"),
    ("/v1/chat/completions", {"json": chat(temperature=5)}, "temperature"),
    ("/v1/chat/completions", {"json": chat(max_tokens="many")}, "max_tokens"),
    ("/v1/chat/completions", {"json": chat(n=3)}, "n"),
    ("/v1/chat/completions", {"json": {"model": "m", "messages": [{"role": "robot"}]}},
     "messages.0.role"),
    ("/v1/chat/completions", {"json": [1, 2]}, None),
    ("/v1/completions", {"json": {"model": "m"}}, "prompt"),
], ids=["bad-json", "no-messages", "empty-messages", "temperature", "max-tokens-type", "n",
        "role", "not-an-object", "no-prompt"])
def test_invalid_requests_are_400_in_openai_shape(gateway, upstream, path, request_kwargs,
                                                  param):
    r = httpx.post(gateway.url + path, **request_kwargs)
    err = assert_error(r, 400, "invalid_request_error", param=param)
    if param:
        assert param in err["message"]
    assert upstream.behaviour.calls == 0
    assert gateway.ledger.rows() == []


def test_oversized_bodies_are_413_whether_announced_or_chunked(start_gateway, upstream):
    gw = start_gateway(deployment("m", upstream.url), general={"max_body_bytes": 2000})
    big = chat(content="word " * 1000)
    err = assert_error(gw.post(json=big), 413, "invalid_request_error")
    assert "general.max_body_bytes" in err["message"]

    def chunks():  # no Content-Length: the limit counts what arrives
        raw = json.dumps(big).encode()
        for i in range(0, len(raw), 500):
            yield raw[i:i + 500]

    r = httpx.post(gw.url + "/v1/chat/completions", content=chunks(),
                   headers={"content-type": "application/json"})
    assert_error(r, 413, "invalid_request_error")
    assert gw.post(json=chat()).status_code == 200, "a body under the limit passes"
    assert upstream.behaviour.calls == 1 and len(gw.ledger.rows()) == 1


def test_unknown_model_and_route_are_404(gateway):
    err = assert_error(gateway.post(json=chat(model="gpt-9")), 404, "not_found_error",
                       code="model_not_found", param="model")
    assert "gpt-9" in err["message"] and "available: m" in err["message"]
    with pytest.raises(openai.NotFoundError):
        gateway.client().chat.completions.create(**chat(model="gpt-9"))
    assert_error(httpx.get(gateway.url + "/v1/nothing"), 404, "not_found_error")
    assert gateway.ledger.rows() == []


def test_api_keys_required_unknown_and_revoked(start_gateway, upstream):
    gw = start_gateway(deployment("m", upstream.url), general={"require_api_key": True})
    key_id, secret = gw.ledger.create_key("alice")
    for key in (None, "sk-not-a-key"):
        assert_error(gw.post(json=chat(), key=key), 401, "authentication_error",
                     code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-not-a-key").chat.completions.create(**chat())

    assert gw.client(secret).chat.completions.create(**chat()).choices
    assert [r["key_id"] for r in gw.ledger.rows()] == [key_id]
    gw.ledger.update_key(key_id, revoked=True)
    assert_error(gw.post(json=chat(), key=secret), 401, "authentication_error",
                 code="invalid_api_key")
    assert len(gw.ledger.rows()) == 1 and upstream.behaviour.calls == 1


def test_revoked_key_refused_even_when_keys_are_optional(gateway):
    key_id, secret = gateway.ledger.create_key("bob")
    gateway.ledger.update_key(key_id, revoked=True)
    assert_error(gateway.post(json=chat(), key=secret), 401, "authentication_error",
                 code="invalid_api_key")
    assert gateway.post(json=chat(), key="sk-unknown").status_code == 200  # anonymous


def test_rate_limit_is_429(gateway, upstream):
    _, secret = gateway.ledger.create_key("carol", rpm_limit=2)
    for _ in range(2):
        assert gateway.post(json=chat(), key=secret).status_code == 200
    r = gateway.post(json=chat(), key=secret)
    assert_error(r, 429, "rate_limit_error", code="rate_limit_exceeded")
    assert int(r.headers["retry-after"]) > 0
    with pytest.raises(openai.RateLimitError):
        gateway.client(secret).chat.completions.create(**chat())
    assert len(gateway.ledger.rows()) == 2 and upstream.behaviour.calls == 2
    assert gateway.metric("tokenomy_rejected_total", reason="rate_limit_exceeded") == 2


def test_budget_exceeded_is_429(gateway, upstream):
    key_id, secret = gateway.ledger.create_key("dave", budget_usd=1e-6)
    err = assert_error(gateway.post(json=chat(), key=secret), 429, "rate_limit_error",
                       code="budget_exceeded")
    assert key_id in err["message"]
    assert upstream.behaviour.calls == 0 and gateway.ledger.rows() == []
    assert gateway.ledger.key(key_id).reserved_usd == 0


# -- 3. retries and fallbacks ----------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_retryable_upstream_error_is_retried(start_upstream, start_gateway, stream):
    fake = start_upstream(fail_first=2)
    gw = start_gateway(deployment("m", fake.url, max_retries=2))
    r = gw.post(json=chat(stream=stream, max_tokens=3))
    assert r.status_code == 200, r.text
    assert (_streamed_text(r) if stream else r.json()["choices"][0]["message"]["content"]) \
        == "echo: the quick"
    assert fake.behaviour.calls == 3
    assert gw.metric("tokenomy_upstream_retries_total", deployment="m") == 2
    (row,) = gw.ledger.rows()
    assert row["status"] == "ok" and row["completion_tokens"] == 3


def test_failing_deployment_falls_back_within_its_group(start_upstream, start_gateway):
    bad, good = start_upstream(fail_with=503), start_upstream()
    gw = start_gateway(deployment("m", bad.url, max_retries=1), deployment("m", good.url))
    r = gw.post(json=chat())
    assert r.status_code == 200 and r.json()["tokenomy"]["deployment"] == "m#2"
    assert (bad.behaviour.calls, good.behaviour.calls) == (2, 1)
    (row,) = gw.ledger.rows()
    assert (row["status"], row["deployment"]) == ("ok", "m#2")
    assert gw.metric("tokenomy_fallbacks_total", deployment="m") == 1


def test_failing_group_falls_back_to_configured_group(start_upstream, start_gateway):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    small = start_upstream()
    gw = start_gateway(deployment("big", dead, max_retries=0), deployment("small", small.url),
                       general={"fallbacks": {"big": ["small"]}})
    response = gw.client().chat.completions.create(**chat(model="big"))
    assert response.model == "big" and response.choices[0].message.content.startswith("echo:")
    (row,) = gw.ledger.rows()
    assert (row["status"], row["model"], row["deployment"]) == ("ok", "big", "small")
    assert row["cost_usd"] == pytest.approx(list_cost(row))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_all_upstreams_failing_is_502_with_the_last_message(start_upstream, start_gateway,
                                                            stream):
    first, last = start_upstream(fail_with=503), start_upstream(fail_with=500)
    gw = start_gateway(deployment("m", first.url, max_retries=0),
                       deployment("m", last.url, max_retries=0))
    err = assert_error(gw.post(json=chat(stream=stream)), 502, "upstream_error",
                       code="upstream_failed")
    assert "m#2 answered 500" in err["message"] and "fake failure" in err["message"]
    assert (first.behaviour.calls, last.behaviour.calls) == (1, 1)
    (row,) = gw.ledger.rows()
    assert (row["status"], row["cost_usd"]) == ("error", 0.0)
    assert "fake failure" in row["error"]
    assert gw.ledger.key("anonymous").reserved_usd == pytest.approx(0.0, abs=1e-12)


def test_client_error_from_upstream_is_relayed_without_fallback(start_upstream,
                                                                start_gateway):
    rejecting, other = start_upstream(fail_with=400), start_upstream()
    gw = start_gateway(deployment("m", rejecting.url), deployment("m", other.url))
    r = gw.post(json=chat())
    assert r.status_code == 400 and r.json()["error"]["message"] == "fake failure"
    assert (rejecting.behaviour.calls, other.behaviour.calls) == (1, 0)
    (row,) = gw.ledger.rows()
    assert row["status"] == "error"


# -- 4. a client that leaves cancels the upstream ----------------------------------------------
def test_client_disconnect_cancels_the_upstream_stream(start_upstream, start_gateway):
    fake = start_upstream(token_delay_s=0.2)
    gw = start_gateway(deployment("m", fake.url))
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30,
                      json=chat(" ".join(["word"] * 30), stream=True)) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data:"))
    assert "echo:" in first

    wait_for(lambda: fake.behaviour.cancelled == 1, what="the upstream stream cancelled")
    row = wait_for(lambda: next((r for r in gw.ledger.rows() if r["status"] != "in_flight"),
                                None), what="the usage row finished")
    assert row["status"] == "cancelled" and fake.behaviour.completed == 0
    assert 1 <= row["completion_tokens"] < 16, row  # what was streamed so far
    assert row["cost_usd"] == pytest.approx(list_cost(row)) and row["cost_usd"] > 0
    key = gw.ledger.key("anonymous")
    assert key.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert key.spent_usd == pytest.approx(row["cost_usd"])
    assert gw.state.inflight == {"m": 0}


def test_client_disconnect_cancels_a_whole_response(start_upstream, start_gateway):
    fake = start_upstream(token_delay_s=0.15)  # 16 words: ~2.4 s
    gw = start_gateway(deployment("m", fake.url))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", timeout=0.5,
                   json=chat(" ".join(["word"] * 30)))
    row = wait_for(lambda: next((r for r in gw.ledger.rows() if r["status"] != "in_flight"),
                                None), timeout=4, what="the usage row finished")
    assert row["status"] == "cancelled" and fake.behaviour.completed == 0
    assert gw.ledger.key("anonymous").reserved_usd == pytest.approx(0.0, abs=1e-12)


# -- 5. exact cache --------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_exact_cache_serves_temperature_zero_repeats(start_upstream, start_gateway, stream):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url), cache={"exact": True})
    request = chat(temperature=0, max_tokens=4, stream=stream)
    first, second = gw.post(json=request), gw.post(json=request)
    assert first.status_code == second.status_code == 200
    assert fake.behaviour.calls == 1
    if stream:
        assert _streamed_text(first) == _streamed_text(second) == "echo: the quick brown"
        assert '"usage"' not in first.text + second.text  # not asked for
    else:
        assert second.json()["choices"] == first.json()["choices"]
        assert second.json()["tokenomy"]["cache"] == "exact"
        assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0

    miss, hit = gw.ledger.rows()
    assert miss["cache"] is None and miss["cost_usd"] > 0
    assert (hit["status"], hit["cache"], hit["cost_usd"]) == ("ok", "exact", 0.0)
    assert hit["cached_tokens"] == miss["prompt_tokens"] + miss["completion_tokens"]
    assert gw.ledger.key("anonymous").spent_usd == pytest.approx(miss["cost_usd"])
    assert gw.metric("tokenomy_cache_hits_total", kind="exact") == 1


def _streamed_text(r: httpx.Response) -> str:
    events = [json.loads(line[5:]) for line in r.text.splitlines()
              if line.startswith("data:") and line != "data: [DONE]"]
    return "".join((e["choices"][0].get("delta") or {}).get("content") or ""
                   for e in events if e.get("choices"))


def test_exact_cache_never_serves_sampled_requests(start_upstream, start_gateway):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url), cache={"exact": True})
    for _ in range(2):
        assert gw.post(json=chat(temperature=1)).status_code == 200
    assert fake.behaviour.calls == 2
    assert [r["cache"] for r in gw.ledger.rows()] == [None, None]


@pytest.mark.parametrize("shared", [False, True], ids=["per-key", "shared"])
def test_exact_cache_is_per_key_unless_shared(start_upstream, start_gateway, shared):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url),
                       cache={"exact": True, "shared_across_keys": shared})
    (_, alice), (_, bob) = gw.ledger.create_key("alice"), gw.ledger.create_key("bob")
    request = chat(temperature=0)
    assert gw.post(json=request, key=alice).status_code == 200
    assert gw.post(json=request, key=bob).status_code == 200
    assert gw.post(json=request, key=alice).status_code == 200
    assert fake.behaviour.calls == (1 if shared else 2)
    assert [r["cache"] for r in gw.ledger.rows()] == \
        ([None, "exact", "exact"] if shared else [None, None, "exact"])


def test_cache_hits_still_count_against_the_rate_limit(start_upstream, start_gateway):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url), cache={"exact": True})
    _, secret = gw.ledger.create_key("gina", rpm_limit=1)
    request = chat(temperature=0)
    assert gw.post(json=request, key=secret).status_code == 200
    assert_error(gw.post(json=request, key=secret), 429, "rate_limit_error",
                 code="rate_limit_exceeded")
    assert fake.behaviour.calls == 1 and len(gw.ledger.rows()) == 1
