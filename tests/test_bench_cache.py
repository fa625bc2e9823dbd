"""bench measures the engine, never a cache: through a gateway with its response cache
on, repeated benches reach the upstream every time; answers a cache served are detected,
left out of every figure, and refused by the meter."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway_harness import deployment
from tokenomy.bench import BenchConfig, bench, save
from tokenomy.bench.client import Target, stream_one
from tokenomy.bench.metrics import summarize
from tokenomy.bench.workload import BenchRequest
from tokenomy.errors import TokenomyError
from tokenomy.serve.meter import load_bench_curve

CACHE = {"cache": {"exact": True, "semantic": False}}


def _bench(url: str):
    return bench(BenchConfig.build(target=url, synthetic=(16, 8), concurrency=2, requests=6,
                                   usd_per_hour=1.0))


def test_repeated_bench_through_a_caching_gateway_reaches_the_engine(
        start_upstream, start_gateway, tmp_path):
    fake = start_upstream(token_delay_s=0.01)
    gw = start_gateway(deployment("m", fake.url), **CACHE)
    first, second = _bench(gw.url + "/v1"), _bench(gw.url + "/v1")
    for result in (first, second):
        (run,) = result.runs
        assert run.requests_ok == 6 and run.requests_cached == 0
    assert fake.behaviour.calls >= 12, "a bench request was answered by the cache"
    ratio = second.runs[0].output_tokens_per_s / first.runs[0].output_tokens_per_s
    assert 0.5 < ratio < 2.0, f"same settings, throughput ratio {ratio:.2f}"
    assert gw.state.cache is not None  # the cache was on all along
    assert not [r for r in gw.ledger.rows() if r["cache"]], "a request hit the cache"


def _cached_records(gw_url: str, n: int):
    """Requests sent as a client without Cache-Control would send them: the second
    round is answered from the gateway's exact cache."""
    target = Target(gw_url + "/v1", "m")
    target.headers.pop("Cache-Control")
    request = BenchRequest(prompt="one two three four",
                           input_tokens=4, max_tokens=8)

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            t0 = time.perf_counter()
            return [await stream_one(client, target, request, i, t0) for i in range(n)]

    try:
        return asyncio.run(go())
    finally:
        target.close()


def test_cached_answers_are_detected_and_left_out(start_upstream, start_gateway):
    fake = start_upstream()
    gw = start_gateway(deployment("m", fake.url), **CACHE)
    records = _cached_records(gw.url, 3)
    assert [r.cached for r in records] == [False, True, True]
    assert fake.behaviour.calls == 1
    run = summarize(records, 1.0, [4, 4, 4], concurrency=1, rate=None, slo_ttft_s=1,
                    slo_tpot_s=1)
    assert (run.requests_ok, run.requests_cached, run.requests_failed) == (1, 2, 0)
    assert run.output_tokens == records[0].output_tokens


def test_meter_refuses_a_bench_result_with_cached_answers(start_upstream, start_gateway,
                                                          tmp_path):
    fake = start_upstream(token_delay_s=0.01)
    gw = start_gateway(deployment("m", fake.url), **CACHE)
    result = _bench(gw.url + "/v1")
    cached_run = result.runs[0].model_copy(update={"requests_cached": 2})
    path, _ = save(result.model_copy(update={"runs": [cached_run]}), tmp_path / "b")
    with pytest.raises(TokenomyError, match="response cache"):
        load_bench_curve(path)
    clean, _ = save(result, tmp_path / "clean")
    assert load_bench_curve(clean).loads
