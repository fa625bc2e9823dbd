"""The gateway's cost meter (serve/meter.py) in exact dollars: a self-hosted deployment's
$/hour over a bench curve at, between and beyond its measured loads, the planner's
estimate without one, API list prices, and cache hits at $0."""

from __future__ import annotations

import pytest

from gateway_harness import chat
from tiny import write_tiny_gguf
from tokenomy import plan
from tokenomy.bench import BenchConfig, BenchResult
from tokenomy.bench.result import BenchRun, LatencyStats
from tokenomy.errors import TokenomyError
from tokenomy.serve.config import GatewayConfig
from tokenomy.serve.meter import Meter

USD_PER_HOUR = 7.2  # $0.002 per second
# A bench sweep: observed concurrency -> machine-seconds per 1M input / output tokens
CURVE = {1.0: (400.0, 1600.0), 2.0: (200.0, 800.0), 4.0: (100.0, 500.0)}


def _run(concurrency: int, observed: float, s_in: float | None, s_out: float | None) -> BenchRun:
    ok = 8 if s_out is not None else 0
    none = LatencyStats(n=0)
    return BenchRun(
        profile="concurrency", concurrency=concurrency, requests_sent=8, requests_ok=ok,
        requests_failed=8 - ok, duration_s=10.0, input_tokens=ok * 100,
        output_tokens=ok * 50, token_counts="usage", ttft_s=none, tpot_s=none, itl_s=none,
        e2e_s=none, request_throughput=ok / 10, output_tokens_per_s=ok * 5.0,
        total_tokens_per_s=ok * 15.0, concurrency_observed=observed, goodput_rps=ok / 10,
        goodput_fraction=ok / 8, machine_s_per_1m_input=s_in, machine_s_per_1m_output=s_out)


def _bench_file(tmp_path, runs: list[BenchRun]):
    result = BenchResult(
        target="http://127.0.0.1:8000/v1", model="m", engine="vllm", serial_engine=False,
        hardware="H100-SXM", usd_per_hour=USD_PER_HOUR, usd_per_hour_source="test",
        workload="synthetic: 100 input / 50 output tokens", profile="sweep", slo={},
        config=BenchConfig(target="http://127.0.0.1:8000/v1", hardware="H100-SXM"),
        runs=runs, rho=0.25, rho_source="test", conditions="test", date="2026-01-01")
    path = tmp_path / "bench.json"
    path.write_text(result.model_dump_json())
    return path


@pytest.fixture
def bench_file(tmp_path):
    # concurrency 8 failed: no machine time, so it is not a point of the curve
    runs = [_run(c, observed, *CURVE[observed])
            for c, observed in ((4, 4.0), (1, 1.0), (2, 2.0))]
    return _bench_file(tmp_path, [*runs, _run(8, 6.0, None, None)])


def _meter(*model_info: dict, engine: str = "openai", **params) -> Meter:
    if engine == "openai":
        params = {"model": "m", "api_base": "http://127.0.0.1:9/v1", **params}
    return Meter(GatewayConfig.model_validate({"model_list": [
        {"model_name": f"d{i}", "params": {"engine": engine, **params}, "model_info": info}
        for i, info in enumerate(model_info)]}))


@pytest.mark.parametrize("load,usd_in,usd_out,at", [
    # $0.002/s x machine-seconds per 1M tokens / 1e6; 1000 prompt + 500 completion tokens
    (1.0, 0.002 * 400 / 1e6, 0.002 * 1600 / 1e6, "1.0"),  # the lowest measured load
    (0.0, 0.002 * 400 / 1e6, 0.002 * 1600 / 1e6, "1.0"),  # idle counts as one request
    (2.0, 0.002 * 200 / 1e6, 0.002 * 800 / 1e6, "2.0"),  # at a measured load
    (3.0, 0.002 * 150 / 1e6, 0.002 * 650 / 1e6, "3.0"),  # half way from 2 to 4
    (2.5, 0.002 * 175 / 1e6, 0.002 * 725 / 1e6, "2.5"),  # a quarter of the way
    (10.0, 0.002 * 100 / 1e6, 0.002 * 500 / 1e6, "4.0"),  # beyond: the highest measured
], ids=["at-lowest", "idle", "at-2", "between-2-4", "quarter-2-4", "beyond"])
def test_self_hosted_rate_from_a_bench_curve(bench_file, load, usd_in, usd_out, at):
    rate = _meter({"usd_per_hour": USD_PER_HOUR, "bench": str(bench_file)}).rate("d0", load)
    assert rate.usd_per_input_token == pytest.approx(usd_in, rel=1e-12)
    assert rate.usd_per_output_token == pytest.approx(usd_out, rel=1e-12)
    assert rate.cost(1000, 500) == pytest.approx(1000 * usd_in + 500 * usd_out, rel=1e-12)
    assert f"$7.2/h over throughput measured by tokenomy bench (bench.json, H100-SXM) " \
           f"at {at} concurrent" == rate.basis


def test_exact_dollars_of_one_request(bench_file):
    meter = _meter({"usd_per_hour": USD_PER_HOUR, "bench": str(bench_file)})
    # 1000 x $0.0000003 + 500 x $0.0000013 (interpolated at 3 concurrent)
    assert meter.rate("d0", 3.0).cost(1000, 500) == pytest.approx(0.00095, rel=1e-12)
    assert meter.rate("d0", 1.0).cost(1000, 500) == pytest.approx(0.0024, rel=1e-12)
    assert meter.rate("d0").cost(1000, 500) == pytest.approx(0.0024, rel=1e-12), "default: 1"
    assert meter.rate("d0", 1.0).cost(0, 0) == 0.0


def test_list_prices_for_an_api():
    meter = _meter({"input_cost_per_token": 1e-6, "output_cost_per_token": 3e-6}, {})
    rate = meter.rate("d0", load=50.0)  # load does not move a list price
    assert (rate.usd_per_input_token, rate.usd_per_output_token) == (1e-6, 3e-6)
    assert rate.cost(1000, 500) == pytest.approx(0.0025, rel=1e-12)
    assert rate.basis == "list price"
    assert meter.rate("d1").cost(1000, 500) == 0.0, "an unpriced API is free, not an error"
    assert meter.sources() == {"d0": "list price", "d1": "list price"}


@pytest.mark.parametrize("info,usd_per_hour", [
    ({}, 3.99),  # the catalog's H100-SXM price
    ({"gpus": 2}, 2 * 3.99),
    ({"usd_per_hour": 2.0}, 2.0),
], ids=["catalog-price", "two-gpus", "own-price"])
def test_planner_fallback_without_a_bench_result(info, usd_per_hour):
    meter = _meter({"hardware": "H100-SXM", "plan_model": "llama-3.1-8b", **info},
                   engine="vllm", model="/models/llama-3.1-8b")
    cost = plan("llama-3.1-8b", "chat", gpus=["H100-SXM"], schemes=["bf16"]).rows[0].cost
    # the planner's machine time (its $/1M at $3.99/h on 1 GPU), at this deployment's price
    scale = usd_per_hour / cost.usd_per_hour / 1e6
    rate = meter.rate("d0", load=7.0)  # one planner point: every load prices the same
    assert rate.usd_per_input_token == pytest.approx(cost.usd_per_m_input * scale, rel=1e-12)
    assert rate.usd_per_output_token == pytest.approx(cost.usd_per_m_output * scale, rel=1e-12)
    assert cost.usd_per_hour == 3.99
    # tests/test_golden_numbers.py pins these $/1M by hand
    assert rate.usd_per_output_token == pytest.approx(0.105216e-6 * usd_per_hour / 3.99,
                                                      rel=1e-4)
    assert "estimated by the planner (llama-3.1-8b bf16 on H100-SXM" in rate.basis
    assert meter.sources()["d0"].startswith("estimated by the planner")


def _tiny_gguf(path):
    return write_tiny_gguf(path)


def test_planner_fallback_on_this_cpu(tmp_path, monkeypatch):
    from tokenomy.plan import cpu

    hardware = cpu.CpuHardware(cpu="test CPU", threads=2, bandwidth_gbs=20.0, gflops=100.0,
                               measured_at="2026-01-01T00:00:00+00:00")
    monkeypatch.setattr(cpu, "measure_hardware", lambda refresh=False: hardware)
    gguf = _tiny_gguf(tmp_path / "tiny.gguf")
    meter = _meter({"hardware": "cpu", "usd_per_hour": 0.36}, engine="llamacpp", model=str(gguf))
    # llama.cpp's server batches: planner points at batch 1, 2, 4, 8 (256 in / 128 out);
    # load 3 lies halfway between the batch-2 and batch-4 points
    e2, e4 = (cpu.estimate(gguf, 256, 128, batch=b, hardware=hardware) for b in (2, 4))
    rate = meter.rate("d0", load=3.0)
    assert rate.usd_per_input_token == pytest.approx(
        0.0001 * (e2.machine_s_per_1m_input + e4.machine_s_per_1m_input) / 2 / 1e6, rel=1e-12)
    assert rate.usd_per_output_token == pytest.approx(
        0.0001 * (e2.machine_s_per_1m_output + e4.machine_s_per_1m_output) / 2 / 1e6,
        rel=1e-12)
    assert rate.basis.endswith("(roofline, this CPU's measured bandwidth and FLOPS) at "
                               "3.0 concurrent")
    assert e4.machine_s_per_1m_output < e2.machine_s_per_1m_output  # batching pays


def test_cpu_deployment_the_planner_cannot_model_needs_a_bench_result():
    with pytest.raises(TokenomyError, match=r"by llama\.cpp or OpenVINO only"):
        _meter({"hardware": "cpu"}, engine="vllm", model="/models/x")


NOT_BENCH = "is not a `tokenomy bench --json` result"


@pytest.mark.parametrize("content", [
    "not json", "[1, 2]", '{"no runs": []}',
    '{"runs": ["not a run"]}',
], ids=["not-json", "a-list", "no-runs-key", "run-not-an-object"])
def test_unreadable_bench_file(tmp_path, content):
    path = tmp_path / "bench.json"
    path.write_text(content)
    with pytest.raises(TokenomyError, match=NOT_BENCH):
        _meter({"usd_per_hour": USD_PER_HOUR, "bench": str(path)})


def test_bench_without_a_successful_run(tmp_path):
    path = _bench_file(tmp_path, [_run(1, 1.0, None, None)])
    with pytest.raises(TokenomyError, match="no successful runs"):
        _meter({"usd_per_hour": USD_PER_HOUR, "bench": str(path)})


def test_gateway_charges_the_bench_price_then_zero_for_a_cache_hit(
        start_upstream, start_gateway, bench_file):
    fake = start_upstream()
    gw = start_gateway({"model_name": "m",
                        "params": {"engine": "openai", "model": "fake",
                                   "api_base": fake.url + "/v1"},
                        "model_info": {"usd_per_hour": USD_PER_HOUR, "bench": str(bench_file)}},
                       cache={"exact": True})
    request = chat(temperature=0, max_tokens=4)
    assert gw.post(json=request).status_code == gw.post(json=request).status_code == 200
    miss, hit = gw.ledger.rows()
    # one request in flight: the curve's lowest point, 400 / 1600 machine-s per 1M tokens
    expected = (miss["prompt_tokens"] * 400 + miss["completion_tokens"] * 1600) * 0.002 / 1e6
    assert miss["prompt_tokens"] > 0 and miss["completion_tokens"] > 0
    assert miss["cost_usd"] == pytest.approx(expected, rel=1e-12)
    assert "measured by tokenomy bench" in miss["price_basis"]
    assert (hit["cache"], hit["cost_usd"], hit["price_basis"]) == ("exact", 0.0, "cache hit: $0")
    assert hit["cached_tokens"] == miss["prompt_tokens"] + miss["completion_tokens"]
    assert gw.ledger.key("anonymous").spent_usd == pytest.approx(expected, rel=1e-12)
