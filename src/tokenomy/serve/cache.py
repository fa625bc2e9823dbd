"""Response cache: exact matches of deterministic (temperature 0) requests, per scope
(API key), with a TTL, in process. Semantic matching and Redis are configured here but
not built yet: asking for them fails with a clear error."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

_IGNORED = {"stream", "stream_options", "user"}


class CacheSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact: bool = True
    semantic: bool = False
    threshold: float = Field(default=0.95, gt=0, le=1)
    ttl_s: float = Field(default=3600.0, gt=0)
    shared_across_keys: bool = False
    redis_url: str | None = None
    max_entries: int = Field(default=10000, ge=1)

    @model_validator(mode="after")
    def _built(self):
        if self.semantic or self.redis_url:
            raise ValueError("cache.semantic and cache.redis_url are not available in this "
                             "version: use the in-process exact cache (exact: true)")
        return self


def cacheable(body: dict) -> bool:
    """Only deterministic requests: temperature explicitly 0 (OpenAI's default is 1)."""
    return body.get("temperature") == 0 and body.get("n") in (None, 1)


def request_key(body: dict) -> str:
    kept = {k: v for k, v in body.items() if k not in _IGNORED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class CacheHit:
    response: dict
    kind: str
    similarity: float


class ResponseCache:
    def __init__(self, settings: CacheSettings, embedder=None):
        self.settings = settings
        self._entries: OrderedDict[tuple[str, str], tuple[float, dict]] = OrderedDict()
        self.hits = self.misses = 0

    async def get(self, body: dict, scope: str) -> CacheHit | None:
        key = (scope, request_key(body))
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self._entries.pop(key, None)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return CacheHit(entry[1], "exact", 1.0)

    async def put(self, body: dict, scope: str, response: dict) -> None:
        self._entries[(scope, request_key(body))] = (time.monotonic() + self.settings.ttl_s,
                                                     response)
        while len(self._entries) > self.settings.max_entries:
            self._entries.popitem(last=False)

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries)}
