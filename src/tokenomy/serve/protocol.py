"""The OpenAI request shapes the gateway validates (and publishes in its OpenAPI schema),
OpenAI-shaped errors, and the JSON codec of the request path (orjson: a tenth of the
standard library's time for a completion's body). Fields the gateway does not know are
passed through."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import orjson
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenomy.numbers import finite


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _text_parts(self):
        """OpenAI's content-part form (`[{"type": "text", "text": ...}]`) becomes the text
        it holds, so every engine behind the gateway takes it; other parts are refused."""
        if isinstance(self.content, list):
            texts = []
            for part in self.content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "input_text") or not isinstance(part.get("text"), str):
                    raise ValueError(f"content part of type {kind!r} is not supported: the "
                                     "engines behind this gateway take text; send "
                                     '{"type": "text", "text": ...} parts or a string')
                texts.append(part["text"])
            self.content = "\n".join(texts)
        return self


class _Generation(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: finite(ge=1, le=1_000_000, integer=True) | None = None
    temperature: finite(ge=0, le=2) | None = None
    top_p: finite(ge=0, le=1) | None = None
    n: finite(ge=1, le=1, integer=True) | None = None
    stop: str | list[str] | None = None
    seed: finite(ge=-(2**63), le=2**63 - 1, integer=True) | None = None
    presence_penalty: finite(ge=-2, le=2) | None = None
    frequency_penalty: finite(ge=-2, le=2) | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _finite_extras(self):
        """Fields passed through to the upstream unchecked hold no NaN or infinity (JSON
        has none: an upstream would refuse the body the gateway forwards)."""
        for name, value in (self.model_extra or {}).items():
            if _non_finite(value):
                raise ValueError(f"{name}: must hold finite numbers only (got NaN or "
                                 "Infinity)")
        return self


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: finite(ge=1, le=1_000_000, integer=True) | None = None

    def text(self) -> str:
        return "\n".join(_content_text(m.content) for m in self.messages)

    def last_user_text(self) -> str:
        users = [m for m in self.messages if m.role == "user"]
        return _content_text((users or self.messages)[-1].content)


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(min_length=1)

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else "\n".join(self.prompt)

    def last_user_text(self) -> str:
        return self.text()


def _non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


def dumps(value) -> bytes:
    """JSON bytes, as Starlette's JSONResponse writes them (UTF-8, compact); what orjson
    refuses (integers past 64 bits, lone surrogates) through the standard library, as
    ASCII (a lone surrogate has no UTF-8)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def loads(raw: bytes | str):
    """Parse JSON; what orjson refuses and the standard library takes (NaN, Infinity)
    through the latter. ValueError if it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


class JSON(Response):
    """A JSON response rendered by `dumps`."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return dumps(content)


def error(status: int, message: str, type_: str = "invalid_request_error",
          code: str | None = None, param: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
