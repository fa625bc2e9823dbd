"""Response cache for deterministic requests (temperature 0).

- exact: the same request (normalized: key order and transport-only fields ignored);
- semantic: a request whose prompt text is within `threshold` cosine similarity of a
  cached one's, with every other parameter (model, max_tokens, stop, ...) identical.
  Embeddings come from all-MiniLM-L6-v2 (`tokenomy.serve.embed`).

Entries live for `ttl_s` and belong to one scope, the API key, unless
`shared_across_keys`. In process by default (LRU-bounded); with `redis_url` in Redis, so
gateway replicas share them (semantic lookups then scan the scope's entries of the same
parameters in the gateway, which suits thousands of entries, not millions).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from tokenomy.errors import InvalidInputError
from tokenomy.numbers import finite

_TRANSPORT = {"stream", "stream_options", "user"}
_PROMPT = {"messages", "prompt"}


class CacheSettings(BaseModel):
    """The `cache:` section of the gateway config."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = True
    semantic: bool = False
    threshold: finite(gt=0, le=1) = 0.95
    ttl_s: finite(gt=0, le=10 * 365 * 86_400) = 3600.0
    shared_across_keys: bool = False
    redis_url: str | None = None
    max_entries: finite(ge=1, le=100_000_000, integer=True) = 10000  # per backend / group


def cacheable(body: dict) -> bool:
    """Only deterministic requests: temperature explicitly 0 (OpenAI's default is 1)."""
    return body.get("temperature") == 0 and body.get("n") in (None, 1)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def request_key(body: dict) -> str:
    return _digest({k: v for k, v in body.items() if k not in _TRANSPORT})


def params_key(body: dict) -> str:
    """Everything but the prompt: semantic matches never cross these."""
    return _digest({k: v for k, v in body.items() if k not in _TRANSPORT | _PROMPT})


def prompt_text(body: dict) -> str:
    """The text a semantic match compares: every message, role-tagged, or the prompt."""
    if "messages" in body:
        parts = []
        for m in body["messages"]:
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{m.get('role', 'user')}: {content or ''}")
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


@dataclass(frozen=True)
class CacheHit:
    response: dict
    kind: str  # "exact" | "semantic"
    similarity: float


class _Memory:
    """In-process entries: an LRU of exact keys and, per (scope, params), a matrix of
    prompt embeddings."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._exact: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._groups: dict[str, list[tuple[float, np.ndarray, dict]]] = {}

    async def get_exact(self, key: str) -> dict | None:
        entry = self._exact.get(key)
        if entry is None or entry[0] < time.monotonic():
            self._exact.pop(key, None)
            return None
        self._exact.move_to_end(key)
        return entry[1]

    async def put_exact(self, key: str, response: dict, ttl_s: float) -> None:
        self._exact[key] = (time.monotonic() + ttl_s, response)
        while len(self._exact) > self.max_entries:
            self._exact.popitem(last=False)

    async def candidates(self, group: str) -> list[tuple[np.ndarray, dict]]:
        now = time.monotonic()
        live = [e for e in self._groups.get(group, []) if e[0] >= now]
        if live:
            self._groups[group] = live
        else:
            self._groups.pop(group, None)
        return [(v, r) for _, v, r in live]

    async def put_semantic(self, group: str, vector: np.ndarray, response: dict,
                           ttl_s: float) -> None:
        entries = self._groups.setdefault(group, [])
        entries.append((time.monotonic() + ttl_s, vector, response))
        del entries[:-self.max_entries]

    async def size(self) -> int:
        return len(self._exact) + sum(len(g) for g in self._groups.values())

    async def close(self) -> None:
        pass


def check_redis(url: str) -> None:
    """Fail fast, before engines start, when the configured Redis cannot be reached."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except Exception as exc:
        raise _unreachable(url, exc) from None


def _unreachable(url: str, exc: Exception) -> InvalidInputError:
    return InvalidInputError(f"cache.redis_url {url}: cannot reach Redis "
                             f"({exc.__class__.__name__}: {exc}); start it or remove "
                             "redis_url to cache in process")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))  # Redis refuses an expiry of 0


class _Redis:
    """Entries in Redis, shared by every gateway on the same URL. Exact: one key each,
    expiring. Semantic: per group a hash of entry id -> float32 embedding, and each
    entry's response under its own expiring key (a vanished response drops its vector)."""

    PREFIX = "tokenomy:cache:"

    def __init__(self, url: str, max_entries: int):
        try:
            import redis.asyncio as redis
        except ImportError:
            raise InvalidInputError("cache.redis_url needs the redis package: pip install "
                                    "'tokenomy[serve]'") from None
        self.client = redis.from_url(url)
        self.url, self.max_entries = url, max_entries

    async def check(self) -> None:
        try:
            await self.client.ping()
        except Exception as exc:
            raise _unreachable(self.url, exc) from None

    async def get_exact(self, key: str) -> dict | None:
        raw = await self.client.get(self.PREFIX + "exact:" + key)
        return None if raw is None else json.loads(raw)

    async def put_exact(self, key: str, response: dict, ttl_s: float) -> None:
        await self.client.set(self.PREFIX + "exact:" + key, json.dumps(response),
                              px=_ms(ttl_s))

    async def candidates(self, group: str) -> list[tuple[np.ndarray, dict]]:
        vectors = await self.client.hgetall(self.PREFIX + "group:" + group)
        if not vectors:
            return []
        ids = list(vectors)
        responses = await self.client.mget([self.PREFIX + "entry:" + i.decode() for i in ids])
        gone = [i for i, r in zip(ids, responses, strict=True) if r is None]
        if gone:
            await self.client.hdel(self.PREFIX + "group:" + group, *gone)
        return [(np.frombuffer(vectors[i], dtype=np.float32), json.loads(r))
                for i, r in zip(ids, responses, strict=True) if r is not None]

    async def put_semantic(self, group: str, vector: np.ndarray, response: dict,
                           ttl_s: float) -> None:
        entry = uuid.uuid4().hex
        group_key = self.PREFIX + "group:" + group
        order_key = self.PREFIX + "order:" + group  # entry -> time stored, to evict oldest
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.PREFIX + "entry:" + entry, json.dumps(response), px=_ms(ttl_s))
            pipe.hset(group_key, entry, np.asarray(vector, dtype=np.float32).tobytes())
            pipe.zadd(order_key, {entry: time.time()})
            pipe.pexpire(group_key, _ms(ttl_s))
            pipe.pexpire(order_key, _ms(ttl_s))
            pipe.hlen(group_key)
            *_, length = await pipe.execute()
        if length > self.max_entries:  # the oldest go; their responses expire on their own
            oldest = [e for e, _ in await self.client.zpopmin(order_key,
                                                              length - self.max_entries)]
            if oldest:
                await self.client.hdel(group_key, *oldest)

    async def size(self) -> int:
        n = 0
        for kind in ("exact:*", "entry:*"):  # responses, not the groups' vector hashes
            async for _ in self.client.scan_iter(match=self.PREFIX + kind):
                n += 1
        return n

    async def close(self) -> None:
        await self.client.aclose()


class ResponseCache:
    def __init__(self, settings: CacheSettings, embedder=None):
        if settings.semantic and embedder is None:
            raise ValueError("a semantic cache needs an embedder")
        self.settings, self.embedder = settings, embedder
        self.backend = (_Redis(settings.redis_url, settings.max_entries) if settings.redis_url
                        else _Memory(settings.max_entries))
        self.hits = {"exact": 0, "semantic": 0}
        self.misses = 0
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # a miss embeds once

    async def start(self) -> None:
        if isinstance(self.backend, _Redis):
            await self.backend.check()

    async def get(self, body: dict, scope: str) -> CacheHit | None:
        s = self.settings
        if s.exact:
            found = await self.backend.get_exact(_digest([scope, request_key(body)]))
            if found is not None:
                self.hits["exact"] += 1
                return CacheHit(found, "exact", 1.0)
        if s.semantic:
            entries = await self.backend.candidates(_digest([scope, params_key(body)]))
            if entries:
                query = await self._embed(body)
                sims = np.stack([v for v, _ in entries]) @ query
                best = int(np.argmax(sims))
                if sims[best] >= s.threshold:
                    self.hits["semantic"] += 1
                    return CacheHit(entries[best][1], "semantic", float(sims[best]))
        self.misses += 1
        return None

    async def put(self, body: dict, scope: str, response: dict) -> None:
        s = self.settings
        if s.exact:
            await self.backend.put_exact(_digest([scope, request_key(body)]), response, s.ttl_s)
        if s.semantic:
            await self.backend.put_semantic(_digest([scope, params_key(body)]),
                                            await self._embed(body), response, s.ttl_s)

    async def _embed(self, body: dict) -> np.ndarray:
        text = prompt_text(body)
        vector = self._vectors.get(text)
        if vector is None:
            vectors = await asyncio.to_thread(self.embedder.encode, [text])
            vector = self._vectors[text] = np.asarray(vectors[0], dtype=np.float32)
            while len(self._vectors) > 256:
                self._vectors.popitem(last=False)
        return vector

    async def stats(self) -> dict:
        return {"hits": dict(self.hits), "misses": self.misses,
                "entries": await self.backend.size(),
                "backend": "redis" if isinstance(self.backend, _Redis) else "memory"}

    async def close(self) -> None:
        await self.backend.close()
