"""The HTTP side of a bench: one OpenAI-compatible target, and one streamed chat
completion timed chunk by chunk."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from tokenomy.bench.workload import BenchRequest
from tokenomy.errors import InvalidInputError, TokenomyError


class BenchError(TokenomyError):
    """The bench target cannot be reached or answered nothing usable."""


@dataclass
class RequestRecord:
    """One request's timeline, in seconds since its run began."""

    index: int
    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # each content chunk's arrival
    output_tokens: int = 0
    prompt_tokens: int | None = None
    usage: bool = False  # token counts came from the upstream's usage block
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float:
        return (self.chunk_times[0] if self.chunk_times else self.end) - self.start

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


class Target:
    """An OpenAI-compatible base URL (ending in /v1) and the model id to ask for."""

    def __init__(self, base_url: str, model_id: str | None = None, api_key: str | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"bench target {base_url!r} is neither 'embedded' nor an "
                                    "http(s):// URL such as http://127.0.0.1:8001/v1")
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # plain http needs no TLS context (httpx builds one per client: ~0.1 s)
        self.verify = self.base_url.startswith("https://")
        self.http = httpx.Client(headers=self.headers, verify=self.verify,
                                 timeout=httpx.Timeout(120.0, connect=10.0))
        self._tokenize_ok: bool | None = None
        try:
            self.model_id = model_id or self._first_model()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _first_model(self) -> str:
        url = f"{self.base_url}/models"
        try:
            r = self.http.get(url, timeout=10.0)
        except httpx.HTTPError as e:
            raise BenchError(f"cannot reach {url} ({e.__class__.__name__}: {e}); is the server "
                             "running? Pass its base URL ending in /v1, or 'embedded'") from e
        if r.status_code != 200:
            raise BenchError(f"GET {url} answered HTTP {r.status_code}: {r.text[:200]}; pass "
                             "--model-id (and --api-key if it needs one)")
        try:
            return r.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BenchError(f"GET {url} listed no model ({r.text[:200]!r}); pass "
                             "--model-id") from e

    def tokenize(self, text: str) -> int | None:
        """Tokens of `text` by the target's own tokenizer (llama-cpp-python's
        /extras/tokenize), or None where the target has no such endpoint."""
        if self._tokenize_ok is False:
            return None
        try:
            r = self.http.post(f"{self.root}/extras/tokenize", json={"input": text})
            tokens = r.json()["tokens"] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            tokens = None
        self._tokenize_ok = tokens is not None
        return len(tokens) if tokens is not None else None

    @property
    def has_tokenizer(self) -> bool:
        if self._tokenize_ok is None:
            self.tokenize("hello")
        return bool(self._tokenize_ok)

    def prompt_tokens(self, messages: list[dict], max_tokens: int = 1) -> int | None:
        """Prompt tokens of `messages` as the server renders them (its chat template),
        from a non-streamed request's usage block."""
        body = {"model": self.model_id, "messages": messages, "max_tokens": max_tokens,
                "temperature": 0}
        try:
            r = self.http.post(f"{self.base_url}/chat/completions", json=body)
            return int(r.json()["usage"]["prompt_tokens"]) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    def body(self, request: BenchRequest) -> dict:
        return {"model": self.model_id, "messages": request.messages, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0,
                "max_tokens": request.max_tokens}


async def stream_one(client: httpx.AsyncClient, target: Target, request: BenchRequest,
                     index: int, t0: float) -> RequestRecord:
    """Send one streamed chat completion; never raises for an upstream failure."""
    rec = RequestRecord(index=index, start=time.perf_counter() - t0)
    try:
        async with client.stream("POST", f"{target.base_url}/chat/completions",
                                 json=target.body(request), headers=target.headers) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                rec.error = f"HTTP {r.status_code}: {_message(text)}"
            else:
                await _read_stream(r, rec, t0)
    except httpx.HTTPError as e:
        rec.error = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
    rec.end = time.perf_counter() - t0
    if rec.ok and not rec.usage and rec.finish_reason == "length":
        rec.output_tokens = max(rec.output_tokens, request.max_tokens)
    return rec


async def _read_stream(r: httpx.Response, rec: RequestRecord, t0: float) -> None:
    async for line in r.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            rec.error = f"malformed stream chunk {data[:120]!r}"
            return
        if "error" in chunk:
            rec.error = f"stream error: {_message(json.dumps(chunk))}"
            return
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                rec.chunk_times.append(time.perf_counter() - t0)
                if not rec.usage:
                    rec.output_tokens += 1
            rec.finish_reason = choice.get("finish_reason") or rec.finish_reason
        usage = chunk.get("usage")
        if usage:
            rec.usage = True
            rec.output_tokens = int(usage.get("completion_tokens") or 0)
            rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    if rec.ok and rec.finish_reason is None:
        # llama-cpp-python ends a stream this way when another request arrives, unless
        # its server runs with --interrupt_requests false
        rec.error = ("the stream ended without a finish_reason: interrupted by the server "
                     "(llama-cpp-python: start it with --interrupt_requests false)")


def _message(text: str) -> str:
    try:
        body = json.loads(text)
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except (ValueError, AttributeError):
        return text[:300]
