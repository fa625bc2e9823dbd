"""Texts for calibration and evaluation, rendered with the model's chat template."""

from __future__ import annotations

from pathlib import Path

from tokenomy.evaluate.data import conversations

MAX_TURNS = 4  # of a conversation used for calibration / reference text


def render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    chat = [{"role": role, "content": content} for role, content in messages]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(chat, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    text = "\n\n".join(content for _, content in messages)
    return text + ("\n\n" if add_generation_prompt else "")


def calibration_texts(tokenizer, source: str | Path, n: int, seed: int) -> list[str]:
    convs = conversations(source, "calibration", n, seed)
    return [render(tokenizer, c.messages[:MAX_TURNS]) for c in convs]


def evaluation_texts(tokenizer, source: str | Path, n: int, seed: int) -> list[str]:
    convs = conversations(source, "evaluation", n, seed)
    return [render(tokenizer, c.messages[:MAX_TURNS]) for c in convs]


def answer_prompts(tokenizer, source: str | Path, n: int, seed: int) -> list[str]:
    """First user turns of held-out conversations, ready for the assistant's answer."""
    convs = conversations(source, "evaluation", n, seed + 1)
    return [render(tokenizer, [("user", c.first_prompt[:2000])], add_generation_prompt=True)
            for c in convs]
