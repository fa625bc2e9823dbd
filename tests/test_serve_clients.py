"""What real clients send and expect: content parts, include_usage always answered, a
failure before or during a stream reaching the client and the ledger as an error (never
an empty success), /health, vLLM-style extras."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway_harness import chat, deployment


def _stream(gw, body: dict) -> tuple[int, list[dict | str]]:
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=30) as r:
        events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    return r.status_code, [e if e == "[DONE]" else json.loads(e) for e in events]


PARTS = [{"role": "user", "content": [{"type": "text", "text": "hello"},
                                      {"type": "text", "text": "there"}]}]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_content_parts_reach_the_engine_as_text(start_upstream, start_gateway, stream):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url))
    body = {"model": "m", "messages": PARTS, "max_tokens": 5}
    if stream:
        status, events = _stream(gw, body)
        assert status == 200 and events[-1] == "[DONE]"
    else:
        assert gw.post(json=body).status_code == 200
    assert fake.behaviour.bodies[-1]["messages"][0]["content"] == "hello\nthere"
    (row,) = gw.ledger.rows()
    assert row["status"] == "ok" and row["completion_tokens"] > 0


def test_non_text_parts_are_refused_with_400(start_upstream, start_gateway):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url))
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}
    r = gw.post(json=body)
    assert r.status_code == 400 and "image_url" in r.json()["error"]["message"]
    assert fake.behaviour.calls == 0 and gw.ledger.rows() == []


def test_error_mid_stream_reaches_client_and_ledger(start_upstream, start_gateway):
    fake = start_upstream(error_after=2)
    gw = start_gateway(deployment("m", fake.url, max_retries=0))
    status, events = _stream(gw, chat("one two three four five", max_tokens=5))
    assert status == 200  # the stream had begun
    assert "[DONE]" not in events and "error" in events[-1]
    (row,) = gw.ledger.rows()
    assert row["status"] == "error" and "mid-stream" in row["error"]


def test_empty_stream_is_an_error_not_a_success(start_upstream, start_gateway):
    fake = start_upstream(empty_stream=True)
    gw = start_gateway(deployment("m", fake.url, max_retries=0))
    _, events = _stream(gw, chat(max_tokens=5))
    assert events and "error" in events[-1] and "[DONE]" not in events
    (row,) = gw.ledger.rows()
    assert row["status"] == "error" and "empty stream" in row["error"]


def test_include_usage_is_answered_when_the_engine_sends_none(start_upstream, start_gateway):
    fake = start_upstream(stream_usage=False)
    gw = start_gateway(deployment("m", fake.url))
    _, events = _stream(gw, chat("a b c", max_tokens=3,
                                 stream_options={"include_usage": True}))
    usage = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] == 3
    assert events[-1] == "[DONE]"


def test_health_and_vllm_style_extras(start_upstream, start_gateway):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url))
    assert httpx.get(gw.url + "/health").status_code == 200
    r = gw.post(json=chat(max_tokens=3, ignore_eos=True, stop=None,
                          stream_options={"continuous_usage_stats": True}))
    assert r.status_code == 200, r.text
    assert fake.behaviour.bodies[-1]["ignore_eos"] is True
