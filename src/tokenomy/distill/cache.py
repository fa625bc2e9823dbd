"""The teacher's top-k log-probabilities for every training window, computed once and
kept on disk (numpy memmaps), so each training step costs only the student. A window's
entry is marked filled once written: a killed run resumes the cache where it stopped.

Per predicted token the cache holds k ids (int32) and k log-probabilities (float32): with
k=32, 256 bytes a token, 512 MB for 2M tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tokenomy.errors import InvalidInputError

BYTES_PER_ENTRY = 8  # int32 id + float32 log-probability


def cache_bytes(windows: int, window_tokens: int, k: int) -> int:
    return windows * (window_tokens - 1) * k * BYTES_PER_ENTRY


def check_resources(directory: Path, disk_bytes: int, ram_bytes: int, what: str) -> None:
    """Refuse before starting, with the numbers, when the disk under `directory` or the
    available memory cannot hold what the run needs."""
    import psutil

    probe = Path(directory).absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if disk_bytes > free:
        raise InvalidInputError(
            f"not enough disk for distill in {probe}: {what} needs {disk_bytes / 2**30:.2f} "
            f"GiB, {free / 2**30:.2f} GiB free; ask for fewer --tokens, a smaller --topk, or "
            "write elsewhere (-o).")
    available = psutil.virtual_memory().available
    if ram_bytes > available:
        raise InvalidInputError(
            f"not enough memory for distill: it needs about {ram_bytes / 2**30:.2f} GiB "
            f"(teacher, student, optimizer state, activations), {available / 2**30:.2f} GiB "
            "available; use shorter --window-tokens or a smaller model.")


class TeacherCache:
    """ids/logp memmaps [W, T-1, k] and a filled flag per window, under `directory`."""

    def __init__(self, directory: Path, windows: int, window_tokens: int, k: int, key: dict):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "meta.json"
        fresh = not meta.is_file()
        if not fresh and json.loads(meta.read_text()) != key:
            raise InvalidInputError(f"{self.directory} holds another run's teacher cache "
                                    "(teacher, data or top-k differ); choose a new -o.")
        mode = "w+" if fresh else "r+"
        shape = (windows, window_tokens - 1, k)
        self.ids = np.lib.format.open_memmap(self.directory / "ids.npy", mode, np.int32, shape)
        self.logp = np.lib.format.open_memmap(self.directory / "logp.npy", mode, np.float32,
                                              shape)
        self._filled_path = self.directory / "filled.npy"
        self.filled = (np.load(self._filled_path) if self._filled_path.is_file()
                       else np.zeros(windows, dtype=bool))
        if fresh:
            meta.write_text(json.dumps(key))

    def fill(self, teacher, windows: np.ndarray, precision: str, step) -> None:
        """Run the teacher over every window not yet cached."""
        import torch

        todo = np.flatnonzero(~self.filled)
        k = self.ids.shape[-1]
        for n, w in enumerate(todo):
            step(f"caching the teacher's top-{k} {n + 1}/{len(todo)}")
            ids = torch.as_tensor(windows[w])[None]  # [1, T]
            with torch.no_grad(), autocast(precision):
                logits = teacher(ids, use_cache=False).logits[0, :-1].float()  # [T-1, V]
            top = torch.log_softmax(logits, -1).topk(k, dim=-1)
            self.ids[w] = top.indices.numpy()
            self.logp[w] = top.values.numpy()
            self.filled[w] = True
            if (n + 1) % 16 == 0 or n + 1 == len(todo):
                self.flush()

    def flush(self) -> None:
        self.ids.flush()
        self.logp.flush()
        np.save(self._filled_path, self.filled)

    def get(self, w: int):
        import torch

        return torch.from_numpy(np.array(self.ids[w])), torch.from_numpy(np.array(self.logp[w]))


def autocast(precision: str):
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda",
                              dtype=torch.bfloat16)
    return contextlib.nullcontext()
