"""Who a request is for and what it is for, from the conventions clients already send,
and the fingerprints `tokenomy review` reads from the ledger.

End user, first found wins, in this order:
  1. body `user` (OpenAI), 2. body `safety_identifier` (OpenAI),
  3. header `x-litellm-end-user-id` (litellm), 4. header `Helicone-User-Id` (Helicone).
Tags, in this order (a tag's NAME is what precedes its first `:`):
  1. body `metadata.tags` (a list of strings; litellm), 2. header `x-litellm-tags`
  (comma-separated), 3. headers `Helicone-Property-NAME: value` -> `name:value` (the
  header name arrives lower-cased), 4. header `x-tokenomy-tags` (comma-separated);
  then the API key's default tags whose NAME the request did not set. Duplicates are
  dropped. The first `feature:X` tag fills the `feature` column.
Bounds (else a 400 that names the field): `metadata` an object of at most 16 keys and
4 KiB as JSON; at most 32 tags from the request, each at most 100 characters; the end
user at most 200 characters; no control characters in either. Requests that send none
of these cost two dictionary lookups and one pass over the header names.

Fingerprints (on every row, cached answers too):
- `prompt_hash`: sha256 of the canonical request (sorted-key JSON of the model, the
  messages or prompt, and the fields that change the answer: HASHED_FIELDS), not of
  `user`, `metadata`, `stream` or anything else;
- `prefix_hash`: sha256 of what a prefix cache would reuse: the system/developer
  messages' text and the first other message's first PREFIX_HEAD_CHARS characters
  (a completion: the prompt's first PREFIX_HEAD_CHARS), joined by newlines; None when
  that prefix is under PREFIX_MIN_CHARS characters. `prefix_chars` is its length.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import orjson

from tokenomy.errors import TokenomyError

MAX_METADATA_KEYS = 16
MAX_METADATA_BYTES = 4096
MAX_TAGS = 32
MAX_TAG_CHARS = 100
MAX_END_USER_CHARS = 200
PREFIX_HEAD_CHARS = 2048
PREFIX_MIN_CHARS = 256
HASHED_FIELDS = ("model", "messages", "prompt", "temperature", "top_p", "max_tokens",
                 "max_completion_tokens", "seed", "stop", "tools", "tool_choice", "functions",
                 "response_format", "presence_penalty", "frequency_penalty", "logit_bias", "n")

_SYSTEM = ("system", "developer")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_USER_HEADERS = (b"x-litellm-end-user-id", b"helicone-user-id")
_PROPERTY = b"helicone-property-"
_NAMED = (*_USER_HEADERS, b"x-litellm-tags", b"x-tokenomy-tags")


class AttributionError(TokenomyError):
    """A request's attribution fields are malformed or over their bounds (a 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Attribution:
    end_user: str | None = None
    tags: tuple[str, ...] = ()

    def with_key_tags(self, key_tags: tuple[str, ...]) -> Attribution:
        """The request's tags, then the key's defaults whose NAME the request did not set."""
        if not key_tags:
            return self
        names = {_name(t) for t in self.tags}
        extra = tuple(t for t in key_tags if _name(t) not in names and t not in self.tags)
        return Attribution(self.end_user, self.tags + extra) if extra else self

    @property
    def feature(self) -> str | None:
        return tag_value(self.tags, "feature") or None

    def columns(self) -> dict:
        return {"end_user": self.end_user, "feature": self.feature,
                "tags": json.dumps(list(self.tags)) if self.tags else None}


NOBODY = Attribution()


def attribute(body, headers) -> Attribution:
    """The request's end user and tags (see the module docstring). `headers`: the ASGI
    scope's [(lower-case name bytes, value bytes)]. AttributionError when malformed."""
    extra = body.model_extra or {}
    user = body.user if body.user is not None else None
    param = "user"
    if user is None and "safety_identifier" in extra:
        user, param = extra["safety_identifier"], "safety_identifier"
        if not isinstance(user, str):
            raise AttributionError("safety_identifier must be a string", param)
    tags: list[str] = []
    metadata = extra.get("metadata")
    if metadata is not None:
        tags += _metadata_tags(metadata)
    found: dict[bytes, str] = {}
    properties: list[str] = []
    for name, value in headers:
        if name[:2] == b"x-" or name[:9] == b"helicone-":
            _header(name, value, found, properties)
    if user is None:
        for name in _USER_HEADERS:
            if name in found:
                user, param = found[name], name.decode()
                break
    if b"x-litellm-tags" in found:
        tags += _split(found[b"x-litellm-tags"], "x-litellm-tags")
    tags += properties
    if b"x-tokenomy-tags" in found:
        tags += _split(found[b"x-tokenomy-tags"], "x-tokenomy-tags")
    if user is None and not tags:
        return NOBODY
    if user is not None:
        _check_text(user, MAX_END_USER_CHARS, param, "the end user")
    return Attribution(user or None, _checked_tags(tags))


def _header(name: bytes, value: bytes, found: dict, properties: list[str]) -> None:
    if name in _NAMED:
        found.setdefault(name, _text(value, name))
    elif name.startswith(_PROPERTY):
        prop, param = name[len(_PROPERTY):].decode("latin-1"), name.decode("latin-1")
        if not prop:
            raise AttributionError("Helicone-Property-NAME header without a NAME", param)
        text = _text(value, name)
        if _CONTROL.search(text):
            raise AttributionError(f"{param} holds a control character", param)
        properties.append(f"{prop}:{text.strip()}")


def _metadata_tags(metadata) -> list[str]:
    if not isinstance(metadata, dict):
        raise AttributionError("metadata must be an object (a JSON mapping)", "metadata")
    if len(metadata) > MAX_METADATA_KEYS:
        raise AttributionError(f"metadata has {len(metadata)} keys: at most "
                               f"{MAX_METADATA_KEYS} are accepted", "metadata")
    try:
        size = len(orjson.dumps(metadata))
    except orjson.JSONEncodeError:  # integers past 64 bits, lone surrogates
        size = len(json.dumps(metadata, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise AttributionError(f"metadata is {size} bytes as JSON: at most "
                               f"{MAX_METADATA_BYTES} are accepted", "metadata")
    tags = metadata.get("tags")
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise AttributionError("metadata.tags must be a list of strings", "metadata.tags")
    return [t.strip() for t in tags if t.strip()]


def _text(value: bytes, name: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise AttributionError(f"header {name.decode('latin-1')} is not UTF-8",
                               name.decode("latin-1")) from None


def _split(value: str, param: str) -> list[str]:
    if _CONTROL.search(value):
        raise AttributionError(f"{param} holds a control character", param)
    return [t.strip() for t in value.split(",") if t.strip()]


def _checked_tags(tags: list[str]) -> tuple[str, ...]:
    if len(tags) > MAX_TAGS:
        raise AttributionError(f"{len(tags)} tags sent: at most {MAX_TAGS} are accepted",
                               "tags")
    for tag in tags:
        _check_text(tag, MAX_TAG_CHARS, "tags", f"tag {tag[:40]!r}")
    return tuple(dict.fromkeys(tags))


def _check_text(text: str, limit: int, param: str, what: str) -> None:
    if len(text) > limit:
        raise AttributionError(f"{what} is {len(text)} characters: at most {limit}", param)
    if _CONTROL.search(text):
        raise AttributionError(f"{what} holds a control character", param)


def check_key_tags(tags) -> tuple[str, ...]:
    """An API key's default tags, bounded as a request's are (InvalidInputError)."""
    from tokenomy.errors import InvalidInputError

    try:
        return _checked_tags([t.strip() for t in tags if t.strip()])
    except AttributionError as exc:
        raise InvalidInputError(f"--tag: {exc}") from None


def _name(tag: str) -> str:
    return tag.split(":", 1)[0]


def tag_value(tags, name: str) -> str | None:
    """The value of the first `name:value` tag; "(set)" for a bare `name` tag; else None."""
    prefix = name + ":"
    for tag in tags:
        if tag.startswith(prefix):
            return tag[len(prefix):]
        if tag == name:
            return "(set)"
    return None


# -- fingerprints ----------------------------------------------------------------------
@dataclass(frozen=True)
class Fingerprint:
    prompt_hash: str
    prefix_hash: str | None
    prefix_chars: int
    message_count: int

    def columns(self) -> dict:
        return {"prompt_hash": self.prompt_hash, "prefix_hash": self.prefix_hash,
                "prefix_chars": self.prefix_chars, "message_count": self.message_count}


def fingerprint(payload: dict) -> Fingerprint:
    """`payload`: the request as validated (exclude_none dump)."""
    canonical = {k: payload[k] for k in HASHED_FIELDS if k in payload}
    try:
        raw = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # integers past 64 bits, lone surrogates
        raw = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    messages = payload.get("messages")
    if messages is not None:
        parts, first = [], None
        for m in messages:
            if m.get("role") in _SYSTEM:
                parts.append(_text_of(m))
            elif first is None:
                first = _text_of(m)[:PREFIX_HEAD_CHARS]
        if first is not None:
            parts.append(first)
        prefix = parts[0] if len(parts) == 1 else "\n".join(parts)
        count = len(messages)
    else:
        prompt = payload.get("prompt", "")
        prefix = (prompt if isinstance(prompt, str) else "\n".join(prompt))[:PREFIX_HEAD_CHARS]
        count = 1
    digest = (hashlib.sha256(prefix.encode(errors="surrogatepass")).hexdigest()
              if len(prefix) >= PREFIX_MIN_CHARS else None)
    return Fingerprint(hashlib.sha256(raw).hexdigest(), digest, len(prefix), count)


def _text_of(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""
