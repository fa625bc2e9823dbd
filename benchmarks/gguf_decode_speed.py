"""Decode speed of GGUF files on this CPU, straight through llama-cpp-python (no server):
what a cheaper quantization really saves here, before any gateway or routing.

    python benchmarks/gguf_decode_speed.py [FILE.gguf ...] [--tokens 64] [--schemes ...]

Without files: the embedded SmolLM2-135M-Instruct (Q4_1) and its requantizations by
`tokenomy compress` (made once under results/gguf-speed/). Each figure is the best of two
greedy runs of `--tokens` tokens after a 12-token prompt, prefill included.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

PROMPT = b"Write a short story about a robot who learns to paint."


def tokens_per_s(path: Path, tokens: int) -> float:
    from tokenomy.compress.gguf_backend import load_llama

    llm = load_llama(path, n_ctx=512)
    prompt = llm.tokenize(PROMPT, add_bos=True)
    best = 0.0
    for _ in range(2):
        llm.reset()
        start, n = time.perf_counter(), 0
        for _token in llm.generate(prompt, temp=0):
            n += 1
            if n == tokens:
                break
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--schemes", nargs="+",
                        default=["gguf-q8_0", "gguf-q4_k_m", "gguf-q3_k_m", "gguf-q2_k"])
    parser.add_argument("--out", type=Path, default=Path("results/gguf-speed"))
    args = parser.parse_args()

    files = list(args.files)
    if not files:
        from tokenomy.compress import compress
        from tokenomy.sources import resolve_source

        files.append(resolve_source(None).path)
        for scheme in args.schemes:
            out = args.out / scheme
            if not out.exists():
                compress(None, scheme, out)
            files.extend(sorted(out.glob("*.gguf")))
    table = Table(title=f"GGUF decode speed (measured: llama-cpp-python, {os.cpu_count()} "
                        f"threads, best of 2 greedy runs of {args.tokens} tokens, prefill "
                        "included)", title_justify="left")
    table.add_column("file")
    table.add_column("MB", justify="right")
    table.add_column("tokens/s", justify="right")
    for path in files:
        table.add_row(path.name, f"{path.stat().st_size / 1e6:.0f}",
                      f"{tokens_per_s(path, args.tokens):.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
