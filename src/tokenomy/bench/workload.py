"""The requests a bench sends, deterministic by seed.

- ShareGPT (or a .jsonl of conversations): the first user turn is the prompt and the
  length of the first answer is the request's ``max_tokens``, so prompts and answers keep
  the dataset's real length distribution, clipped by ``max_input_tokens`` /
  ``max_output_tokens``.
- Synthetic ``IN:OUT``: a prompt of IN tokens of random common words and ``max_tokens``
  OUT (engines without ``ignore_eos`` may stop earlier; the output is measured).

Lengths are counted with the target's tokenizer where it exposes one (llama-cpp-python's
``/extras/tokenize``), else estimated at 4 characters per token.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from tokenomy.errors import InvalidInputError

Counter = Callable[[str], int]
CHARS_PER_TOKEN = 4
_WORDS = (
    "time", "people", "year", "way", "day", "thing", "man", "world",
    "life", "hand", "part", "child", "eye", "woman", "place", "work",
    "week", "case", "point", "number", "group", "problem", "fact", "water",
    "house", "story", "light", "river", "music", "garden", "window", "city",
    "mountain", "bread", "letter", "morning", "paper", "road", "friend", "table",
    "voice", "winter", "summer", "market", "teacher", "doctor", "forest", "island",
    "engine", "question", "answer", "history", "science", "money", "power", "family",
    "country", "school", "night", "door", "animal", "ocean",
)


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    max_tokens: int
    input_tokens: int  # the user message's tokens, as counted when built

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def estimate_tokens(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def clip(text: str, max_tokens: int, count: Counter) -> tuple[str, int]:
    """The longest prefix of `text` (to within a few tokens) of at most `max_tokens`."""
    n = count(text)
    for _ in range(6):
        if n <= max_tokens:
            return text, n
        text = text[: max(1, int(len(text) * max_tokens / n * 0.97))].rstrip()
        n = count(text)
    return text, n


def sharegpt_requests(source: str, n: int, seed: int, max_input: int, max_output: int,
                      count: Counter = estimate_tokens) -> list[BenchRequest]:
    from tokenomy.evaluate.data import conversations

    pool = conversations(source, "calibration", max(4 * n, 64), seed)
    pairs = [pair for conv in pool if (pair := _prompt_and_answer(conv.messages))]
    if not pairs:
        raise InvalidInputError(f"{source} has no conversation with a user turn followed by "
                                "an answer; bench needs both (the answer sets max_tokens).")
    out = []
    for i in range(n):  # more requests than conversations: go round again
        prompt, answer = pairs[i % len(pairs)]
        prompt, n_in = clip(prompt, max_input, count)
        n_out = min(max(count(answer), 2), max_output)
        out.append(BenchRequest(prompt=prompt, max_tokens=n_out, input_tokens=n_in))
    return out


def _prompt_and_answer(messages) -> tuple[str, str] | None:
    for (role, content), nxt in pairwise(messages):
        if role == "user":
            return (content, nxt[1]) if nxt[0] == "assistant" else None
    return None


def synthetic_requests(n: int, seed: int, input_tokens: int, output_tokens: int,
                       count: Counter = estimate_tokens) -> list[BenchRequest]:
    rng = random.Random(seed)
    lead = "Write a long story that uses these words:"
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(input_tokens)]
        text, n_in = clip(f"{lead} {' '.join(words)}", input_tokens, count)
        out.append(BenchRequest(prompt=text, max_tokens=output_tokens, input_tokens=n_in))
    return out
