"""The one exception tree of tokenomy.

The library raises; it never prints or exits. Only the CLI turns a
``TokenomyError`` into ``Error: <message>`` and exit code 1.

    TokenomyError                 base: every error a user can act on
    ├── CatalogError              a catalog file is missing, malformed or fails its schema
    ├── NotFoundError             an unknown model, GPU or scheme name (lists close matches)
    ├── ModelSpecError            a config.json / GGUF file cannot be turned into a ModelSpec
    ├── InvalidInputError         nonsense input: negative rate, context beyond the model's,
    │                             a missing, malformed or unwritable file, ...
    └── DoesNotFitError           no deployable configuration holds the model on that hardware

Messages are one line and name the field or file; they never quote a file's content
(a config may point at a file of secrets): `problems()` summarizes a pydantic
ValidationError that way.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TokenomyError(Exception):
    """Base of every error tokenomy raises on purpose; its message says what to do."""


class CatalogError(TokenomyError):
    """A catalog file is missing, malformed, or does not match its schema."""


class NotFoundError(TokenomyError, LookupError):
    """An unknown name; the message lists the closest known names."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = ""):
        self.kind, self.name = kind, name
        known = sorted(set(known))
        close = difflib.get_close_matches(name.lower(), known, n=4, cutoff=0.4)
        close += [k for k in known if name.lower() in k and k not in close][: 4 - len(close)]
        msg = f"unknown {kind} {name!r}."
        if close:
            msg += f" Did you mean: {', '.join(close)}?"
        else:
            msg += f" Known: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''}."
        if hint:
            msg += f" {hint}"
        super().__init__(msg)


class ModelSpecError(TokenomyError):
    """A model description (config.json, GGUF metadata) cannot be read or is incomplete."""


class InvalidInputError(TokenomyError, ValueError):
    """Input that cannot make sense: the message names the field and the accepted range."""


class DoesNotFitError(TokenomyError):
    """The model does not fit the hardware in any deployable configuration."""


def problems(exc, limit: int = 3) -> str:
    """A pydantic ValidationError as one line, 'field.path: message; ...', without the
    input values pydantic quotes (they may be a file's content, or a secret)."""
    errors = exc.errors(include_input=False, include_url=False)
    parts = []
    for e in errors[:limit]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "value"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {' '.join(msg.split())}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more
