"""`bench(config)`: serve or reach the target, send the workload at each load level,
and put the measurements beside the planner's estimate."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tokenomy.bench.client import BenchError, RequestRecord, Target, stream_one
from tokenomy.bench.estimate import Estimator, with_estimate
from tokenomy.bench.load import run_load
from tokenomy.bench.metrics import measure_rho, summarize, with_cost
from tokenomy.bench.result import BenchConfig, BenchResult, BenchRun
from tokenomy.bench.workload import (
    BenchRequest,
    estimate_tokens,
    sharegpt_requests,
    synthetic_requests,
)
from tokenomy.capability import usable_cores

Step = Callable[[str], None]
EMBEDDED = ("", "embedded")


def bench(config: BenchConfig | None = None, step: Step | None = None) -> BenchResult:
    """Measure `config.target` under each load level of `config`; raises BenchError when
    the target cannot be reached or no request succeeds."""
    config = config or BenchConfig()
    step = step or (lambda _msg: None)
    usd_per_hour, price_source = _price(config)
    started = {}
    with _serving(config, step, started) as (target, gguf, engine):
        conditions = _conditions(config, engine)
        count = _counter(target)
        step("building the workload ...")
        requests = _requests(config, count)
        step("warm-up request ...")
        overhead = _warm_up(target, requests[0], count)
        counted = [r.input_tokens + (overhead or 0) for r in requests]
        measured = _measure(config, target, requests, counted, step)
        runs = [run for run, _ in measured]
        cached = sum(r.requests_cached for r in runs)
        if not any(r.requests_ok for r in runs) and cached:
            raise BenchError(f"every answer from {target.base_url} came from a response "
                             "cache, not the engine: nothing was measured. Turn the cache "
                             "off, or bench the engine's own URL")
        if not any(r.requests_ok for r in runs):
            raise BenchError(f"no request succeeded at {target.base_url}; first upstream "
                             f"error: {runs[0].errors[0] if runs[0].errors else 'none'}")
        step("estimating with the planner ...")
        serial = engine == "llama-cpp-python"
        estimator = Estimator(config, gguf, serial, usd_per_hour, engine)
        rho, rho_source = _rho(measured, counted)
        runs = [_finish(r, rho, usd_per_hour, estimator) for r in runs]
        return BenchResult(
            target=config.target if config.target not in EMBEDDED else "embedded",
            model=f"{target.model_id}" + (f" ({gguf.name})" if gguf else ""),
            engine=engine, serial_engine=serial, hardware=config.hardware,
            usd_per_hour=usd_per_hour, usd_per_hour_source=price_source,
            workload=config.workload, profile=config.profile,
            slo={"ttft_s": config.slo_ttft_s, "tpot_s": config.slo_tpot_s},
            config=config, runs=runs, rho=rho, rho_source=rho_source,
            prompt_overhead_tokens=overhead, estimate=estimator.summary,
            estimate_note=estimator.note, conditions=conditions,
            startup_s=started.get("seconds"),
            date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )


def _measure(config: BenchConfig, target: Target, requests: list[BenchRequest],
             counted: list[int], step: Step) -> list[tuple[BenchRun, list[RequestRecord]]]:
    """One run per load level, lowest first."""
    out = []
    for level in config.concurrencies():
        label = f"rate {config.rate:g}/s" if level is None else f"concurrency {level}"
        records, wall = run_load(
            target, requests, concurrency=level, rate=config.rate,
            duration_s=config.duration_s, timeout_s=config.timeout_s, seed=config.seed,
            progress=lambda i, label=label: step(f"{label} {i}/{len(requests)}"))
        run = summarize(records, wall, counted, concurrency=level, rate=config.rate,
                        slo_ttft_s=config.slo_ttft_s, slo_tpot_s=config.slo_tpot_s)
        out.append((run, records))
    return out


def _rho(measured: list[tuple[BenchRun, list[RequestRecord]]],
         counted: list[int]) -> tuple[float, str]:
    """The prefill ratio at the lowest load that has successful requests."""
    for run, records in measured:
        rho = measure_rho(records, counted)
        if rho is not None:
            return rho, f"measured at {run.label} (TTFT per prompt token / TPOT)"
    return 1.0, "assumed 1 (no request with 2+ output tokens)"


def _finish(run: BenchRun, rho: float, usd_per_hour: float, estimator: Estimator) -> BenchRun:
    run = with_cost(run, rho, usd_per_hour)
    return with_estimate(run, estimator.for_run(run))


def _price(config: BenchConfig) -> tuple[float, str]:
    if config.usd_per_hour is not None:
        return config.usd_per_hour, "--usd-per-hour"
    if config.hardware == "cpu":
        from tokenomy.optimize.cpu_speed import DEFAULT_CPU_USD_PER_HOUR

        return DEFAULT_CPU_USD_PER_HOUR, "AWS m7i.large on-demand (2 vCPU), us-east-1"
    from tokenomy.catalog import default_catalog

    gpu = default_catalog().gpu(config.hardware)
    return gpu.price.usd_per_hour, f"catalog price of one {gpu.name}"


@contextlib.contextmanager
def _serving(config: BenchConfig, step: Step,
             started: dict) -> Iterator[tuple[Target, Path | None, str]]:
    """(target, the GGUF it serves if known, engine name); starts the embedded engine
    (`config.engine`) and puts its start-up time in `started['seconds']`."""
    if config.target not in EMBEDDED:
        gguf = Path(config.plan_model) if (config.plan_model or "").endswith(".gguf") else None
        with Target(config.target, config.model_id, config.api_key) as target:
            yield target, gguf, _engine_of(target)
        return
    from tokenomy.serve.config import Deployment, EngineParams
    from tokenomy.serve.engines import Engine, gguf_of

    gguf = gguf_of(config.model)
    name = "smollm2" if config.model is None else Path(gguf).stem
    # one slot per request kept in flight: the engine batches them all
    slots = max((c for c in config.concurrencies() if c), default=8)
    params = EngineParams(engine=config.engine, model=str(gguf), parallel=slots)
    engine = Engine(Deployment(model_name=name, params=params))
    engine.preflight()  # this CPU can run it, or one clear line before anything starts
    label = {"llamacpp": "llama.cpp server", "openvino": "openvino"}[config.engine]
    step(f"starting {label} on {gguf.name} ...")
    start = time.perf_counter()
    engine.start()
    try:
        engine.wait_healthy()
        started["seconds"] = round(time.perf_counter() - start, 2)
        with Target(engine.base_url, engine.model_id) as target:
            yield target, gguf, label
    finally:
        engine.stop()


def _engine_of(target: Target) -> str:
    if target.has_tokenizer:
        return "llama-cpp-python"
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        r = target.http.get(f"{target.root}/props", timeout=5.0)
        if r.status_code == 200 and "default_generation_settings" in r.json():
            return "llama.cpp server"
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
        r = target.http.get(f"{target.root}/version", timeout=5.0)
        if r.status_code == 200 and "version" in r.json():
            return "vllm"
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError, IndexError):
        r = target.http.get(f"{target.base_url}/models", timeout=5.0)
        if r.status_code == 200 and r.json()["data"][0].get("owned_by") == "openvino":
            return "openvino"  # tokenomy.serve.openvino_server
    return "openai-compatible"


def _counter(target: Target):
    if target.has_tokenizer:
        return lambda text: target.tokenize(text) or estimate_tokens(text)
    return estimate_tokens


def _requests(config: BenchConfig, count) -> list[BenchRequest]:
    if config.synthetic:
        return synthetic_requests(config.requests, config.seed, *config.synthetic, count=count)
    return sharegpt_requests(config.dataset, config.requests, config.seed,
                             config.max_input_tokens, config.max_output_tokens, count=count)


def _warm_up(target: Target, request: BenchRequest, count) -> int | None:
    """Send one request (not measured); raise if it fails. Returns the chat template's
    extra prompt tokens when the upstream reports no usage while streaming."""
    async def once() -> RequestRecord:
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0),
                                     verify=target.verify) as client:
            short = BenchRequest(request.prompt, min(request.max_tokens, 8),
                                 request.input_tokens)
            return await stream_one(client, target, short, 0, 0.0)

    rec = asyncio.run(once())
    if not rec.ok:
        raise BenchError(f"the warm-up request to {target.base_url} (model "
                         f"{target.model_id!r}) failed: {rec.error}")
    if rec.usage:
        return None
    probe = "Hi"
    rendered = target.prompt_tokens([{"role": "user", "content": probe}])
    return max(0, rendered - count(probe)) if rendered is not None else 0


def _conditions(config: BenchConfig, engine: str) -> str:
    from tokenomy.optimize.cpu_speed import cpu_name

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    data = (f"synthetic {config.synthetic[0]}:{config.synthetic[1]}" if config.synthetic
            else f"{config.dataset} (max {config.max_input_tokens} in / "
                 f"{config.max_output_tokens} out tokens)")
    return (f"client {cpu_name()}, {usable_cores()} threads, load average {load:.2f} at "
            f"start; engine {engine}; {data}; {config.requests} requests per run, "
            f"<= {config.duration_s:g} s per run; seed {config.seed}; temperature 0")
