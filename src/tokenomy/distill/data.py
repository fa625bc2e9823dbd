"""Training and calibration tokens for distill: conversations of the calibration split
(never the held-out evaluation split `tokenomy eval` measures on), rendered with the
model's chat template, concatenated and cut into windows of equal length."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenomy.errors import InvalidInputError
from tokenomy.evaluate.data import conversations
from tokenomy.evaluate.prompts import render

ALL = 10**9  # conversations to sample: every one of the split, shuffled by seed


def token_windows(tokenizer, dataset: str | Path, windows: int, window_tokens: int,
                  seed: int) -> np.ndarray:
    """Up to `windows` windows [W, window_tokens] of token ids; fewer when the dataset
    runs out (training cycles through them). No usable text is one clear error."""
    need = windows * window_tokens
    ids: list[int] = []
    for conv in conversations(dataset, "calibration", ALL, seed):
        if not any(content.strip() for _, content in conv.messages):
            continue
        ids.extend(tokenizer(render(tokenizer, conv.messages), add_special_tokens=False)
                   .input_ids)
        if len(ids) >= need:
            break
    if len(ids) < window_tokens:
        raise InvalidInputError(
            f"{dataset} has no usable text for distill: {len(ids)} tokens in its calibration "
            f"split, fewer than one window of {window_tokens}; give a dataset with more text "
            "(one JSON object per line with 'text' or 'messages').")
    usable = min(len(ids), need) // window_tokens
    return np.asarray(ids[:usable * window_tokens], dtype=np.int64).reshape(usable,
                                                                             window_tokens)
