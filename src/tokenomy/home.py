"""Where tokenomy keeps its caches: ``$TOKENOMY_HOME`` or ``~/.cache/tokenomy``."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    root = os.environ.get("TOKENOMY_HOME") or Path.home() / ".cache" / "tokenomy"
    return Path(root)


def cache_dir(kind: str) -> Path:
    """A cache subdirectory (created): e.g. 'models' (GGUF sources converted once to
    transformers), 'references' (base-model distributions), 'results'."""
    path = home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
