"""The engines' own Prometheus metrics (llama.cpp's server, vLLM) scraped into the
gateway's /metrics at each scrape, with a `deployment` label: fake engines on 127.0.0.1
for the merge and for engines that fail, and the real embedded llama.cpp once."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
from fastapi.responses import PlainTextResponse
from prometheus_client.parser import text_string_to_metric_families

from fake_upstream import Behaviour, ServerThread, free_port
from fake_upstream import create_app as fake_app
from gateway_harness import PRICE_IN, PRICE_OUT, chat, deployment
from tokenomy.serve.app import GatewayState, Upstream, create_app
from tokenomy.serve.config import GatewayConfig
from tokenomy.serve.metrics import ENGINE_SCRAPE_TIMEOUT_S

# what llama.cpp's server answers (a counter without `_total` included), plus the shapes
# vLLM's prometheus_client output has: labels, a histogram, `_created` gauges
ENGINE_TEXT = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total {n}
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 34
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.5",model_name="m \\"q\\" \\\\ x"} 1.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m \\"q\\" \\\\ x"} 3.0
vllm:e2e_request_latency_seconds_count{model_name="m \\"q\\" \\\\ x"} 3.0
vllm:e2e_request_latency_seconds_sum{model_name="m \\"q\\" \\\\ x"} 4.5
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{model_name="m"} 1.7e+09
# HELP engine_thing An engine metric with a deployment label of its own
# TYPE engine_thing gauge
engine_thing{deployment="inner"} 1
"""


def _engine_text(prompt_tokens: int) -> str:
    return ENGINE_TEXT.replace("{n}", str(prompt_tokens))


def _engine(metrics_text: str | None = None, delay_s: float = 0.0, status: int = 200):
    """A fake OpenAI-compatible engine that also serves /metrics (None: no such route)."""
    app = fake_app(Behaviour())
    if metrics_text is not None:
        @app.get("/metrics")
        async def metrics():
            await asyncio.sleep(delay_s)
            return PlainTextResponse(metrics_text, status_code=status)
    return ServerThread(app)


def _self_hosted(name: str, engine: str, tmp_path) -> dict:
    """A deployment of a fake engine: for vLLM an empty checkpoint directory, for llama.cpp
    a GGUF with no tensors (reading the real one's chat template takes seconds)."""
    model = tmp_path / "empty.gguf" if engine == "llamacpp" else tmp_path
    if engine == "llamacpp" and not model.is_file():
        from gguf import GGUFWriter

        writer = GGUFWriter(str(model), "llama")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"model_name": name, "params": {"engine": engine, "model": str(model)},
            "model_info": {"input_cost_per_token": PRICE_IN,
                           "output_cost_per_token": PRICE_OUT}}


def _gateway(tmp_path, engines: dict[str, str], api: dict | None = None) -> ServerThread:
    """A gateway whose deployments {name: fake engine URL} are self-hosted (llamacpp, or
    vllm for names starting with 'v'), plus an API deployment when given."""
    cfg = GatewayConfig.model_validate({
        "model_list": [_self_hosted(n, "vllm" if n.startswith("v") else "llamacpp", tmp_path)
                       for n in engines] + ([api] if api else []),
        "database_url": f"sqlite:///{tmp_path / 'usage.db'}"})
    upstreams = {d.id: Upstream(d, engines[d.id] + "/v1", d.id) for d in cfg.model_list
                 if d.id in engines}
    if api:
        d = cfg.model_list[-1]
        upstreams[d.id] = Upstream(d, d.params.api_base, d.params.model)
    return ServerThread(create_app(GatewayState(cfg, upstreams)))


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(text: str, name: str, **labels: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_engines_metrics_are_merged_with_a_deployment_label(tmp_path):
    with _engine(_engine_text(31)) as a, _engine(_engine_text(99)) as b, \
            _engine(_engine_text(7)) as api_engine:
        api = deployment("api", api_engine.url)  # engine: openai, not ours: not scraped
        with _gateway(tmp_path, {"a": a.url, "vb": b.url}, api) as gw:
            r = httpx.post(gw.url + "/v1/chat/completions", json=chat(model="a"), timeout=10)
            assert r.status_code == 200, r.text
            text = httpx.get(gw.url + "/metrics", timeout=10).text

    merged = _families(text)  # parses, or this raises
    # every engine sample is there once per deployment, unchanged but for the label
    for name, samples in _families(_engine_text(31)).items():
        got = merged[name]
        for d, n in (("a", 31), ("vb", 99)):
            want = [(s.name, {**{"exported_deployment" if k == "deployment" else k: v
                                 for k, v in s.labels.items()}, "deployment": d},
                     n if s.name == "llamacpp:prompt_tokens_total" else s.value)
                    for s in samples]
            assert [(s.name, s.labels, s.value) for s in got
                    if s.labels["deployment"] == d] == want, name
    assert not _value(text, "llamacpp:prompt_tokens_total", deployment="api")
    # names as the engines expose them (dashboards keep working), one HELP/TYPE each
    lines = text.splitlines()
    for name in ("llamacpp:n_tokens_max", "llamacpp:prompt_tokens_total"):
        assert f"# TYPE {name} counter" in lines, name
        assert any(ln.startswith(name + "{") for ln in lines), name
    headers = [ln for ln in lines if ln.startswith(("# HELP ", "# TYPE "))]
    assert len(headers) == len(set(headers)), "a HELP/TYPE line is repeated"
    assert len({ln.split()[2] for ln in headers}) * 2 == len(headers)
    # the gateway's own metrics, the request included, and each engine's scrape status
    assert _value(text, "tokenomy_requests_total", deployment="a", status="ok") == [1.0]
    assert _value(text, "tokenomy_engine_metrics_up", deployment="a") == [1.0]
    assert _value(text, "tokenomy_engine_metrics_up", deployment="vb") == [1.0]
    assert not _value(text, "tokenomy_engine_metrics_up", deployment="api")


BROKEN = [  # (engine's /metrics: text, delay, status), or None: it has no /metrics
    pytest.param(dict(metrics_text=_engine_text(1), delay_s=2.5), id="times-out"),
    pytest.param(dict(metrics_text="<html><body>Bad gateway</body></html>"), id="html"),
    pytest.param(dict(metrics_text='{"error": "nope"}'), id="json"),
    pytest.param(dict(metrics_text="# TYPE x weird\nx 1\n"), id="bad-type"),
    pytest.param(dict(metrics_text=_engine_text(1), status=500), id="status-500"),
    pytest.param(dict(metrics_text=None), id="no-route-404"),
    pytest.param(None, id="not-listening"),
]


@pytest.mark.parametrize("broken", BROKEN)
def test_an_engine_that_fails_its_scrape_is_left_out(tmp_path, broken):
    with contextlib.ExitStack() as stack:
        good = stack.enter_context(_engine(_engine_text(5)))
        bad = (stack.enter_context(_engine(**broken)).url if broken
               else f"http://127.0.0.1:{free_port()}")
        gw = stack.enter_context(_gateway(tmp_path, {"good": good.url, "bad": bad}))
        started = time.monotonic()
        r = httpx.get(gw.url + "/metrics", timeout=10)
        took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert took < ENGINE_SCRAPE_TIMEOUT_S + 1.5, f"/metrics took {took:.2f} s"
    text = r.text
    _families(text)  # still valid exposition text
    assert _value(text, "llamacpp:prompt_tokens_total", deployment="good") == [5.0]
    assert not _value(text, "llamacpp:prompt_tokens_total", deployment="bad")
    assert _value(text, "tokenomy_engine_metrics_up", deployment="good") == [1.0]
    assert _value(text, "tokenomy_engine_metrics_up", deployment="bad") == [0.0]


@pytest.mark.integration
def test_llamacpp_metrics_through_the_gateway(tmp_path):
    """The real embedded llama.cpp server: its `llamacpp:` samples, counted for the one
    request sent, appear in the gateway's /metrics under the deployment's name."""
    import openai

    from tokenomy.serve import running_engines

    engines = GatewayConfig.model_validate({
        "model_list": [{"model_name": "smollm2", "params": {"parallel": 2}}]})
    # the gateway's side of the same deployment, priced by list price and with a
    # tensor-less GGUF as its model: reading the real one's chat template and planning
    # its price take 5-15 s here, and neither is under test
    config = GatewayConfig.model_validate({
        "model_list": [_self_hosted("smollm2", "llamacpp", tmp_path)],
        "cache": {"exact": False, "semantic": False},
        "database_url": f"sqlite:///{tmp_path / 'usage.db'}"})
    with running_engines(engines) as started:
        upstreams = {d.id: Upstream(d, started[d.id].base_url, started[d.id].model_id)
                     for d in config.model_list}
        with ServerThread(create_app(GatewayState(config, upstreams))) as gw:
            client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="any", max_retries=0)
            reply = client.chat.completions.create(
                model="smollm2", max_tokens=4, temperature=0,
                messages=[{"role": "user", "content": "Say hello."}])
            text = httpx.get(gw.url + "/metrics", timeout=10).text
    assert _value(text, "tokenomy_engine_metrics_up", deployment="smollm2") == [1.0]
    prompt = _value(text, "llamacpp:prompt_tokens_total", deployment="smollm2")
    predicted = _value(text, "llamacpp:tokens_predicted_total", deployment="smollm2")
    assert prompt == [reply.usage.prompt_tokens], (prompt, reply.usage)
    assert predicted == [reply.usage.completion_tokens], (predicted, reply.usage)
    assert _value(text, "llamacpp:requests_processing", deployment="smollm2") == [0.0]
    llamacpp = {s.name for f in text_string_to_metric_families(text) for s in f.samples
                if s.name.startswith("llamacpp:")}
    assert len(llamacpp) >= 10, sorted(llamacpp)
