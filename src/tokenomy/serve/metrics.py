"""The gateway's Prometheus metrics, on a registry of its own (one per app), and the
engines' own metrics merged into them.

Every scrape of the gateway's `/metrics` also fetches `/metrics` from each engine it
started that serves one (llama.cpp's server, vLLM), concurrently and within
`ENGINE_SCRAPE_TIMEOUT_S`, and re-exposes their samples under their own names
(`llamacpp:*`, `vllm:*`: the engines' Grafana dashboards work unchanged) with a
`deployment` label added; one HELP/TYPE per family however many deployments run the
same engine. An engine that does not answer in time, or not with Prometheus text, is
left out and shows as `tokenomy_engine_metrics_up{deployment=...} 0`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = logging.getLogger("tokenomy.serve")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
ENGINES_WITH_METRICS = ("llamacpp", "vllm")  # tokenomy.serve.openvino_server has none
ENGINE_SCRAPE_TIMEOUT_S = 0.5
MAX_FEATURES = 50  # distinct `feature` label values; later ones count as "other"


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tokenomy_requests", "Requests by outcome",
                                ["model", "deployment", "status"], registry=r)
        self.tokens = Counter("tokenomy_tokens", "Tokens by kind (prompt, completion, cached)"
                              " and feature (the request's feature tag, capped)",
                              ["deployment", "kind", "feature"], registry=r)
        self.cost = Counter("tokenomy_cost_usd", "Metered cost in USD by deployment and "
                            "feature (the request's feature tag, capped)",
                            ["deployment", "feature"], registry=r)
        self.latency = Histogram("tokenomy_request_latency_seconds", "End-to-end latency",
                                 ["deployment"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tokenomy_time_to_first_token_seconds", "Streaming TTFT",
                              ["deployment"], buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("tokenomy_cache_hits", "Responses from the cache", ["kind"],
                                  registry=r)
        self.cache_misses = Counter("tokenomy_cache_misses", "Cacheable requests not in cache",
                                    registry=r)
        self.routed = Counter("tokenomy_router_decisions", "model:auto decisions",
                              ["deployment"], registry=r)
        self.difficulty = Histogram("tokenomy_router_difficulty", "model:auto requests' "
                                    "predicted difficulty (1 - quality on the cheapest)",
                                    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1),
                                    registry=r)
        self.rejected = Counter("tokenomy_rejected", "Requests refused before any upstream",
                                ["reason"], registry=r)
        self.retries = Counter("tokenomy_upstream_retries", "Upstream retries", ["deployment"],
                               registry=r)
        self.fallbacks = Counter("tokenomy_fallbacks", "Moves to the next deployment after one "
                                 "failed", ["deployment"], registry=r)
        self.engine_up = Gauge("tokenomy_engine_metrics_up", "1 if the engine's own /metrics "
                               "answered this scrape in time with Prometheus text, else 0",
                               ["deployment"], registry=r)
        self._outcomes: dict[tuple, tuple] = {}
        self._features: set[str] = set()

    def feature(self, feature: str | None) -> str:
        """The `feature` label: "" without one; the first MAX_FEATURES distinct values
        as they are, any later one "other" (labels stay low-cardinality)."""
        if not feature:
            return ""
        if feature in self._features:
            return feature
        if len(self._features) < MAX_FEATURES:
            self._features.add(feature)
            return feature
        return "other"

    def record(self, model: str, deployment: str, status: str, prompt: int, completion: int,
               cost: float, latency: float, ttft: float | None,
               feature: str | None = None) -> None:
        """One finished request's counters and latencies (each label set's children are
        looked up once, not per request)."""
        feature = self.feature(feature)
        children = self._outcomes.get((model, deployment, status, feature))
        if children is None:
            children = self._outcomes[(model, deployment, status, feature)] = (
                self.requests.labels(model=model, deployment=deployment, status=status),
                self.tokens.labels(deployment=deployment, kind="prompt", feature=feature),
                self.tokens.labels(deployment=deployment, kind="completion",
                                   feature=feature),
                self.cost.labels(deployment=deployment, feature=feature),
                self.latency.labels(deployment=deployment),
                self.ttft.labels(deployment=deployment))
        requests, prompts, completions, costs, latencies, ttfts = children
        requests.inc()
        prompts.inc(prompt)
        completions.inc(completion)
        costs.inc(cost)
        latencies.observe(latency)
        if ttft is not None:
            ttfts.observe(ttft)

    async def exposition(self, client: httpx.AsyncClient, upstreams: Mapping) -> bytes:
        """The gateway's metrics, then its engines' (scraped now) in the text format.
        `upstreams`: {deployment id: tokenomy.serve.proxy.Upstream}."""
        targets = {i: (up.base_url.removesuffix("/v1") + "/metrics", up.headers)
                   for i, up in upstreams.items()
                   if up.deployment.params.engine in ENGINES_WITH_METRICS}
        scraped = await asyncio.gather(*(_scrape(client, url, headers)
                                         for url, headers in targets.values()))
        merged = _Merged()
        for deployment, text in zip(targets, scraped, strict=True):
            families = _parse(text, deployment) if text is not None else None
            self.engine_up.labels(deployment=deployment).set(families is not None)
            merged.add(deployment, families or [])
        return generate_latest(self.registry) + merged.render().encode()


async def _scrape(client: httpx.AsyncClient, url: str, headers: dict) -> str | None:
    try:
        async with asyncio.timeout(ENGINE_SCRAPE_TIMEOUT_S):  # the whole answer, not a read
            r = await client.get(url, headers=headers, timeout=ENGINE_SCRAPE_TIMEOUT_S)
        r.raise_for_status()
        return r.text
    except (httpx.HTTPError, TimeoutError) as exc:
        log.debug("engine metrics at %s not scraped: %r", url, exc)
        return None


def _parse(text: str, deployment: str) -> list | None:
    """The engine's metric families, with their exposed names restored: the parser
    renames counters to the OpenMetrics form (family `x`, samples `x_total`) whatever
    they were called, and llama.cpp has counters without `_total`."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        log.debug("engine metrics of %s are not Prometheus text: %s", deployment, exc)
        return None
    bare = {name for name in re.findall(r"^\s*#\s+TYPE\s+(\S+)\s+counter\s*$", text, re.M)
            if not name.endswith("_total")}
    for f in families:
        if f.type == "counter" and f.name in bare:
            f.samples = [s._replace(name=f.name) if s.name == f.name + "_total" else s
                         for s in f.samples]
        elif f.type == "counter":
            f.name += "_total"
    return families


class _Merged:
    """Engine families by exposed name: one HELP/TYPE each, every deployment's samples
    under it with `deployment` set (an engine's own label of that name is kept as
    `exported_deployment`, as Prometheus does)."""

    _TYPES = ("counter", "gauge", "histogram", "summary")  # else `untyped` in this format

    def __init__(self):
        self.families: dict[str, tuple[str, str, list[Sample]]] = {}

    def add(self, deployment: str, families: Iterable) -> None:
        for f in families:
            if f.name.startswith("tokenomy_"):  # ours: an engine may not shadow them
                continue
            type_ = f.type if f.type in self._TYPES else "untyped"
            _, seen_type, samples = self.families.setdefault(
                f.name, (f.documentation, type_, []))
            if seen_type != type_:  # two engine versions disagree: the first one wins
                continue
            samples += [s._replace(labels=_relabelled(s.labels, deployment))
                        for s in f.samples]

    def render(self) -> str:
        lines = []
        for name, (doc, type_, samples) in self.families.items():
            name = escape_metric_name(name)
            doc = doc.replace("\\", r"\\").replace("\n", r"\n")
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {type_}"]
            lines += [_sample_line(s) for s in samples]
        return "".join(line + "\n" for line in lines)


def _relabelled(labels: dict[str, str], deployment: str) -> dict[str, str]:
    out = {"deployment": deployment}
    for k, v in labels.items():
        out["exported_deployment" if k == "deployment" else k] = v
    return out


def _sample_line(s: Sample) -> str:
    labels = ",".join(f'{escape_label_name(k)}="{_escape_value(v)}"'
                      for k, v in s.labels.items())
    stamp = f" {int(float(s.timestamp) * 1000)}" if s.timestamp is not None else ""
    return f"{escape_metric_name(s.name)}{{{labels}}} {floatToGoString(s.value)}{stamp}"


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
