"""The gateway's Prometheus metrics, on a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tokenomy_requests", "Requests by outcome",
                                ["model", "deployment", "status"], registry=r)
        self.tokens = Counter("tokenomy_tokens", "Tokens by kind (prompt, completion, cached)",
                              ["deployment", "kind"], registry=r)
        self.cost = Counter("tokenomy_cost_usd", "Metered cost in USD", ["deployment"],
                            registry=r)
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
