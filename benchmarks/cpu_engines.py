"""The CPU engines side by side on the embedded GGUF: llama.cpp's server and OpenVINO
GenAI's continuous batching, each started the way the gateway starts it.

    python benchmarks/cpu_engines.py [--levels 1 16] [--requests 32] [--synthetic 64:64]

For each engine: start-up seconds, then output tok/s and $/1M output tokens (at the
m7i.large price) per concurrency level, measured by `tokenomy bench` in one run.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tokenomy.bench import BenchConfig, bench
from tokenomy.serve.config import Deployment
from tokenomy.serve.engines import Engine


def measure(engine_name: str, levels: list[int], requests: int,
            synthetic: tuple[int, int]) -> tuple[float, list]:
    deployment = Deployment.model_validate({
        "model_name": f"smollm2-{engine_name}",
        "params": {"engine": engine_name, "parallel": max(levels)}})
    engine = Engine(deployment)
    start = time.monotonic()
    engine.start()
    try:
        engine.wait_healthy(300)
        startup = time.monotonic() - start
        runs = [bench(BenchConfig.build(target=engine.base_url, model_id=engine.model_id,
                                        synthetic=synthetic, concurrency=c,
                                        requests=max(requests, 2 * c),
                                        usd_per_hour=0.1008)).runs[0] for c in levels]
    finally:
        engine.stop()
    return startup, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--synthetic", default="64:64")
    args = parser.parse_args()
    synthetic = tuple(int(x) for x in args.synthetic.split(":"))
    console = Console(width=150)
    table = Table(title=f"CPU engines on the embedded SmolLM2 Q4_1 (measured; synthetic "
                        f"{args.synthetic} tokens, $0.1008/h)")
    for col in ("engine", "start-up s", "concurrency", "out tok/s", "TPOT p50 ms",
                "$/1M out", "vs best at this level"):
        table.add_column(col)
    results = {}
    for name in ("llamacpp", "openvino"):
        console.print(f"{name} ...")
        results[name] = measure(name, args.levels, args.requests, synthetic)
    for i, level in enumerate(args.levels):
        best = max(r[1][i].output_tokens_per_s for r in results.values())
        for name, (startup, runs) in results.items():
            run = runs[i]
            table.add_row(name, f"{startup:.1f}", str(level), f"{run.output_tokens_per_s:.1f}",
                          f"{run.tpot_s.p50 * 1e3:.1f}", f"{run.usd_per_1m_output:.4f}",
                          f"{run.output_tokens_per_s / best:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
