"""The response cache: exact and semantic lookups, scopes, TTL and bounds, in process and
in a real Redis; the packaged MiniLM embedder; a semantic hit through the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest

from fake_upstream import Behaviour, ServerThread, free_port
from fake_upstream import create_app as fake_app
from tokenomy.errors import InvalidInputError
from tokenomy.serve.app import GatewayState, Upstream, create_app
from tokenomy.serve.cache import (
    CacheSettings,
    ResponseCache,
    _digest,
    cacheable,
    params_key,
    prompt_text,
)
from tokenomy.serve.config import GatewayConfig

PRICE_IN, PRICE_OUT = 1e-6, 2e-6


class HashEmbedder:
    """Deterministic bag of words hashed into 64 dimensions, unit rows: cosine similarity
    is the words' overlap, and nothing is downloaded."""

    name = "hashed-bag-of-words"
    dim = 64

    def __init__(self):
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # [N, 64]
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def similarity(a: dict, b: dict) -> float:
    va, vb = HashEmbedder().encode([prompt_text(a), prompt_text(b)])
    return float(va @ vb)


def chat(content: str, **fields) -> dict:
    return {"model": "m", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": content}], **fields}


def answer(text: str) -> dict:
    return {"id": "r1", "choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


FRANCE = chat("what is the capital of france")
FRANCE_TODAY = chat("what is the capital of france today")
SPAIN = chat("what is the capital of spain")


# -- backends ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server): the Redis "
                    "cache backend is not tested here")
    import redis

    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield client, url
    client.close()
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["memory", "redis"])
def redis_url(request) -> str | None:
    """None (the in-process backend) or the URL of an empty Redis database."""
    if request.param == "memory":
        return None
    client, url = request.getfixturevalue("redis_server")
    client.flushdb()
    return url


def using(redis_url: str | None, check, embedder=None, **settings) -> None:
    """Run `await check(cache)` against a started cache on one event loop."""
    async def main():
        cache = ResponseCache(CacheSettings(redis_url=redis_url, **settings),
                              embedder or HashEmbedder())
        await cache.start()
        try:
            await check(cache)
        finally:
            await cache.close()

    asyncio.run(main())


# -- exact ---------------------------------------------------------------------------------
def test_exact_hit_miss_and_normalization(redis_url):
    async def check(cache):
        assert await cache.get(FRANCE, "alice") is None
        await cache.put(FRANCE, "alice", answer("Paris"))
        hit = await cache.get(FRANCE, "alice")
        assert hit is not None and (hit.kind, hit.similarity) == ("exact", 1.0)
        assert hit.response == answer("Paris")

        reordered = {k: FRANCE[k] for k in reversed(list(FRANCE))}
        reordered["messages"] = [{"content": "what is the capital of france", "role": "user"}]
        transport = {**FRANCE, "stream": True, "user": "someone", "stream_options": {}}
        for body in (reordered, transport):
            found = await cache.get(body, "alice")
            assert found is not None and found.kind == "exact", body
        for body in (SPAIN, {**FRANCE, "max_tokens": 9}, {**FRANCE, "model": "other"}):
            assert await cache.get(body, "alice") is None, body
        stats = await cache.stats()
        assert stats["hits"] == {"exact": 3, "semantic": 0} and stats["misses"] == 4
        assert stats["backend"] == ("redis" if redis_url else "memory")
        assert stats["entries"] >= 1

    using(redis_url, check, exact=True)


def test_scopes_are_isolated(redis_url):
    async def check(cache):
        await cache.put(FRANCE, "alice", answer("Paris"))
        assert await cache.get(FRANCE, "bob") is None, "exact hit across scopes"
        assert await cache.get(FRANCE_TODAY, "bob") is None, "semantic hit across scopes"
        assert (await cache.get(FRANCE, "alice")).kind == "exact"
        assert (await cache.get(FRANCE_TODAY, "alice")).kind == "semantic"

    using(redis_url, check, exact=True, semantic=True, threshold=0.9)


def test_entries_expire_after_ttl(redis_url):
    async def check(cache):
        await cache.put(FRANCE, "alice", answer("Paris"))
        assert (await cache.get(FRANCE, "alice")).kind == "exact"
        assert (await cache.get(FRANCE_TODAY, "alice")).kind == "semantic"
        await asyncio.sleep(0.5)
        assert await cache.get(FRANCE, "alice") is None, "exact entry outlived its TTL"
        assert await cache.get(FRANCE_TODAY, "alice") is None, "semantic entry outlived TTL"
        assert (await cache.stats())["entries"] == 0

    using(redis_url, check, exact=True, semantic=True, threshold=0.9, ttl_s=0.3)


def test_memory_exact_entries_are_lru_bounded():
    async def check(cache):
        a, b, c = chat("alpha"), chat("beta"), chat("gamma")
        await cache.put(a, "s", answer("A"))
        await cache.put(b, "s", answer("B"))
        assert await cache.get(a, "s") is not None  # a is now the most recent
        await cache.put(c, "s", answer("C"))
        assert await cache.get(b, "s") is None, "the least recently used entry stayed"
        assert (await cache.get(a, "s")).response == answer("A")
        assert (await cache.get(c, "s")).response == answer("C")
        assert (await cache.stats())["entries"] == 2

    using(None, check, exact=True, max_entries=2)


def test_semantic_groups_are_bounded(redis_url):
    async def check(cache):
        for i in range(5):
            await cache.put(chat(f"what is the capital of country number {i}"), "s",
                            answer(str(i)))
        entries = await cache.backend.candidates(_digest(["s", params_key(FRANCE)]))
        assert len(entries) == 2, f"{len(entries)} entries in a group bounded at 2"
        kept = sorted(json.dumps(r, sort_keys=True) for _, r in entries)
        assert kept == sorted(json.dumps(answer(i), sort_keys=True) for i in "34"), \
            "the oldest entries go first"

    using(redis_url, check, exact=False, semantic=True, max_entries=2)


# -- semantic ------------------------------------------------------------------------------
def test_semantic_hit_above_threshold_and_miss_below(redis_url):
    near, far = similarity(FRANCE, FRANCE_TODAY), similarity(FRANCE, SPAIN)
    assert far < 0.9 < near < 1, (near, far)  # the test's premise

    async def check(cache):
        await cache.put(FRANCE, "alice", answer("Paris"))
        hit = await cache.get(FRANCE_TODAY, "alice")
        assert hit is not None and hit.kind == "semantic"
        assert hit.similarity == pytest.approx(near, abs=1e-5)
        assert hit.response == answer("Paris")
        assert await cache.get(SPAIN, "alice") is None, f"hit at similarity {far:.3f} < 0.9"
        stats = await cache.stats()
        assert stats["hits"] == {"exact": 0, "semantic": 1} and stats["misses"] == 1

    using(redis_url, check, exact=False, semantic=True, threshold=0.9)


def test_semantic_never_crosses_other_parameters(redis_url):
    async def check(cache):
        await cache.put(FRANCE, "alice", answer("Paris"))
        for change in ({"max_tokens": 9}, {"model": "other"}, {"stop": ["\n"]},
                       {"top_p": 0.5}):
            assert await cache.get({**FRANCE_TODAY, **change}, "alice") is None, change
        assert (await cache.get(FRANCE_TODAY, "alice")).kind == "semantic"
        # transport-only fields are not parameters
        assert (await cache.get({**FRANCE_TODAY, "stream": True}, "alice")).kind == "semantic"

    using(redis_url, check, exact=False, semantic=True, threshold=0.9)


def test_a_miss_embeds_its_prompt_once():
    embedder = HashEmbedder()

    async def check(cache):
        await cache.put(FRANCE, "alice", answer("Paris"))
        assert await cache.get(SPAIN, "alice") is None
        await cache.put(SPAIN, "alice", answer("Madrid"))
        assert embedder.calls == 2, "the miss's embedding was computed again for put"

    using(None, check, embedder=embedder, exact=False, semantic=True, threshold=0.9)


def test_only_deterministic_requests_are_cacheable():
    assert cacheable(FRANCE)
    assert cacheable({**FRANCE, "n": 1})
    for body in ({**FRANCE, "temperature": 0.7}, {k: v for k, v in FRANCE.items()
                                                   if k != "temperature"}, {**FRANCE, "n": 2}):
        assert not cacheable(body), body


def test_semantic_cache_needs_an_embedder():
    with pytest.raises(ValueError, match="embedder"):
        ResponseCache(CacheSettings(semantic=True))


def test_unreachable_redis_is_a_clear_error():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def main():
        cache = ResponseCache(CacheSettings(redis_url=url))
        try:
            await cache.start()
        finally:
            await cache.close()

    with pytest.raises(InvalidInputError, match=re.escape(url)):
        asyncio.run(main())


# -- the packaged embedder ---------------------------------------------------------------------
def test_minilm_embedder_scores_paraphrases_high_and_unrelated_low():
    from tokenomy.serve.embed import Embedder

    embedder = Embedder()
    v = embedder.encode(["What is the capital of France?", "what's the capital city of France",
                         "The mitochondria is the powerhouse of the cell."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > 0.8, f"paraphrase similarity {v[0] @ v[1]:.3f}"
    assert v[0] @ v[2] < 0.5, f"unrelated similarity {v[0] @ v[2]:.3f}"
    assert embedder.encode([]).shape == (0, 384)


def test_embedder_refuses_a_directory_without_a_model(tmp_path):
    from tokenomy.serve.embed import Embedder

    with pytest.raises(InvalidInputError, match=re.escape(str(tmp_path))):
        Embedder(tmp_path)


# -- through the gateway ---------------------------------------------------------------------
@pytest.fixture
def gateway_with_cache(tmp_path):
    with contextlib.ExitStack() as stack:
        def start(**cache):
            behaviour = Behaviour()
            upstream = stack.enter_context(ServerThread(fake_app(behaviour))).url
            cfg = GatewayConfig.model_validate({
                "model_list": [{"model_name": "m", "params": {
                    "engine": "openai", "model": "fake", "api_base": upstream + "/v1"},
                    "model_info": {"input_cost_per_token": PRICE_IN,
                                   "output_cost_per_token": PRICE_OUT}}],
                "database_url": f"sqlite:///{tmp_path / 'usage.db'}", "cache": cache})
            state = GatewayState(cfg, {d.id: Upstream(d, d.params.api_base, d.params.model)
                                       for d in cfg.model_list}, embedder=HashEmbedder())
            url = stack.enter_context(ServerThread(create_app(state))).url
            return url, state, behaviour

        yield start


def test_gateway_answers_a_similar_request_from_the_semantic_cache(gateway_with_cache):
    url, state, upstream = gateway_with_cache(exact=True, semantic=True, threshold=0.9)
    first = httpx.post(url + "/v1/chat/completions", json=FRANCE, timeout=30)
    second = httpx.post(url + "/v1/chat/completions", json=FRANCE_TODAY, timeout=30)
    assert first.status_code == second.status_code == 200, second.text
    assert second.json()["tokenomy"]["cache"] == "semantic"
    assert second.json()["tokenomy"]["similarity"] == \
        pytest.approx(similarity(FRANCE, FRANCE_TODAY), abs=1e-4)
    assert second.json()["choices"] == first.json()["choices"]
    assert upstream.calls == 1

    miss, hit = state.ledger.rows()
    assert miss["cache"] is None and miss["cost_usd"] > 0
    assert (hit["status"], hit["cache"], hit["cost_usd"]) == ("ok", "semantic", 0.0)
    assert state.ledger.key("anonymous").spent_usd == pytest.approx(miss["cost_usd"])

    other = httpx.post(url + "/v1/chat/completions", json={**FRANCE_TODAY, "max_tokens": 5},
                       timeout=30)
    assert other.status_code == 200 and "cache" not in other.json()["tokenomy"]
    assert upstream.calls == 2, "a different max_tokens was served from the cache"


@pytest.mark.parametrize("shared", [False, True], ids=["per-key", "shared"])
def test_gateway_semantic_cache_is_per_key_unless_shared(gateway_with_cache, shared):
    url, state, upstream = gateway_with_cache(exact=False, semantic=True, threshold=0.9,
                                              shared_across_keys=shared)
    (_, alice), (_, bob) = state.ledger.create_key("alice"), state.ledger.create_key("bob")

    def ask(body, key):
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text

    ask(FRANCE, alice)
    ask(FRANCE_TODAY, bob)
    assert upstream.calls == (1 if shared else 2)
    assert [r["cache"] for r in state.ledger.rows()] == [None, "semantic" if shared else None]
