"""Where tokenomy keeps its caches, ledger and engine logs: ``$TOKENOMY_HOME`` or
``~/.cache/tokenomy``. It holds API-key hashes, spend and engine logs (prompts), so it is
private: the directory and its subdirectories are 0700, the files written there 0600."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def home() -> Path:
    """The path (not created: a command that only reads must not create it)."""
    root = os.environ.get("TOKENOMY_HOME") or Path.home() / ".cache" / "tokenomy"
    return Path(root)


def private_dir(path: Path) -> Path:
    """`path` created (parents too) with mode 0700; an existing one is tightened to 0700
    when it is tokenomy's home or inside it."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    root = home()
    if path == root or root in path.parents:
        for d in [root, *(p for p in reversed(path.parents) if root in p.parents), path]:
            if d.is_dir() and d.stat().st_mode & 0o777 != PRIVATE_DIR:
                d.chmod(PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """`path` created empty with mode 0600 unless it exists (its directory must exist)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    os.close(fd)
    return Path(path)


def open_private(path: Path, mode: str = "wb"):
    """`open(path, mode)` for writing, the file created 0600 (an engine's log, say)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, PRIVATE_FILE), mode)


def cache_dir(kind: str) -> Path:
    """A cache subdirectory (created 0700, as is the home): e.g. 'models' (GGUF sources
    converted once to transformers), 'references' (base-model distributions), 'results'."""
    return private_dir(home() / kind)
