"""Decode time per byte of each llama.cpp block type on this CPU, for `--objective
cpu-time`: bytes are what memory-bound decode moves, but the kernels unpack the types at
different speeds, so a byte of Q5_0 need not cost what a byte of Q4_0 or Q8_0 does.

Measured, not assumed: the model is written once per type (every allocatable tensor at
that type, round to nearest: speed does not depend on the values), and llama.cpp decodes
DECODE_TOKENS tokens on each, one stream, all usable cores, best of REPEATS. A type's
weight is its seconds per token per file byte relative to the fastest type's. The fixed
part of a step (attention over the cache, norms, sampling) is shared out per byte too,
which pulls the weights toward 1: they understate the spread, never overstate it.
Cached under $TOKENOMY_HOME/sensitivity by the model's content hash, this CPU and the
number of threads; timings taken at another load do not compare, so the load per core
is kept with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from tokenomy.home import cache_dir
from tokenomy.sources import ModelSource, content_hash

DECODE_TOKENS = 48
REPEATS = 3
CACHE_VERSION = 1


class TypeSpeeds(BaseModel):
    cpu: str
    threads: int
    load_per_core: float  # 1-minute load average per core when measured
    seconds_per_token: dict[str, float]  # type -> decode seconds per token, all at that type
    file_bytes: dict[str, int]  # type -> that file's size

    def weights(self) -> dict[str, float]:
        """type -> decode seconds per byte, relative to the fastest type per byte."""
        per_byte = {t: s / self.file_bytes[t] for t, s in self.seconds_per_token.items()}
        fastest = min(per_byte.values())
        return {t: v / fastest for t, v in per_byte.items()}

    def predict_s(self, bytes_by_type: dict[str, int], other_bytes: int) -> float:
        """Decode seconds per token of a mixed file: each type's bytes at its own measured
        seconds per byte, the bytes outside the allocation at the fastest type's."""
        per_byte = {t: s / self.file_bytes[t] for t, s in self.seconds_per_token.items()}
        return (sum(per_byte[t] * b for t, b in bytes_by_type.items())
                + min(per_byte.values()) * other_bytes)

    @property
    def conditions(self) -> str:
        return (f"llama.cpp decode, {DECODE_TOKENS} tokens, 1 stream, {self.threads} threads "
                f"on {self.cpu}, best of {REPEATS}, load {self.load_per_core:.2f} per core")


def decode_seconds(gguf: Path) -> float:
    """Best of REPEATS: seconds per decode step after a short prompt, one stream, on
    every usable core (llama.cpp as `optimize` times it)."""
    from tokenomy.compress.gguf_backend import load_llama

    llm = load_llama(gguf, n_ctx=DECODE_TOKENS + 32)
    vocab = llm.n_vocab()
    prompt = [(100 + i) % vocab for i in range(16)]
    best = float("inf")
    for _ in range(REPEATS):
        llm.reset()
        llm.eval(prompt)
        start = time.perf_counter()
        for i in range(DECODE_TOKENS):
            llm.eval([(1000 + 37 * i) % vocab])
        best = min(best, (time.perf_counter() - start) / DECODE_TOKENS)
    del llm
    return best


def type_speeds(source: ModelSource, names: list[str], types: list[str],
                step=None) -> TypeSpeeds:
    """Measure (or read from the cache) each of `types` on this CPU, for the tensors
    `names` of the GGUF `source`."""
    from tokenomy.capability import cpu_info, usable_cores
    from tokenomy.compress.auto.writer import write_mixed

    step = step or (lambda _m: None)
    cpu, threads = cpu_info().name, usable_cores()
    key = json.dumps([CACHE_VERSION, content_hash(source), cpu, threads, sorted(types)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    cached = cache_dir("sensitivity") / f"speed-{digest}.json"
    if cached.is_file():
        step("decode speed per type: cached")
        return TypeSpeeds.model_validate_json(cached.read_text())
    load = round(os.getloadavg()[0] / max(threads, 1), 2)
    seconds, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="tokenomy-speed-") as tmp:
        for qtype in types:
            step(f"decode speed of {qtype} on this CPU (writing all-{qtype}, then timing)")
            path = Path(tmp) / f"all-{qtype}.gguf"
            write_mixed(source.path, path, {n: qtype for n in names})
            seconds[qtype] = decode_seconds(path)
            sizes[qtype] = path.stat().st_size
            path.unlink()
    speeds = TypeSpeeds(cpu=cpu, threads=threads, load_per_core=load,
                        seconds_per_token=seconds, file_bytes=sizes)
    cached.write_text(speeds.model_dump_json(indent=1))
    return speeds
