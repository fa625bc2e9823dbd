"""What the gateway adds: latency (p50/p99) and the most requests/s, against the same
upstream called directly and through the litellm proxy.

    python benchmarks/gateway_overhead.py [--requests 300] [--concurrency 32]
        [--duration 15] [--litellm PATH/TO/litellm]

The upstream is tests/fake_upstream.py (an OpenAI-compatible server answering at once)
in its own process, so the numbers are the proxies' own cost. tokenomy runs with its
full path on (key lookup, atomic budget admission, SQLite ledger row per request,
Prometheus metrics), cache off. litellm runs from its own venv (`make litellm-venv`),
without a database. Client, upstream and proxy share this machine's cores: read the
ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=140)
BODY = {"model": "bench", "messages": [{"role": "user", "content": "say hi"}],
        "max_tokens": 4, "temperature": 0}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], health: str, env: dict | None = None, timeout: float = 120):
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(health, timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd} did not become healthy: {Path(log.name).read_text()[-2000:]}")


async def latency(url: str, n: int, headers: dict) -> list[float]:
    """Sequential requests: each one's round trip, in seconds."""
    out = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(5):  # warm-up
            await client.post(url, json=BODY, headers=headers)
        for _ in range(n):
            t = time.perf_counter()
            r = await client.post(url, json=BODY, headers=headers)
            out.append(time.perf_counter() - t)
            r.raise_for_status()
    return out


async def throughput(url: str, concurrency: int, duration: float, headers: dict) -> tuple:
    """Closed loop: `concurrency` clients for `duration` seconds; (req/s, errors)."""
    done, errors = 0, 0
    stop = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def worker():
            nonlocal done, errors
            while time.perf_counter() < stop:
                try:
                    r = await client.post(url, json=BODY, headers=headers)
                    done += r.status_code == 200
                    errors += r.status_code != 200
                except httpx.HTTPError:
                    errors += 1

        start_t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start_t), errors


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    home = Path(os.environ.get("TOKENOMY_HOME", Path.home() / ".cache" / "tokenomy"))
    parser.add_argument("--litellm", default=str(home / "litellm-venv" / "bin" / "litellm"))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    procs = []
    try:
        up_port = free_port()
        procs.append(start([sys.executable, "-c", (
            "import sys, uvicorn; sys.path.insert(0, 'tests'); "
            "from fake_upstream import Behaviour, create_app; "
            f"uvicorn.run(create_app(Behaviour()), host='127.0.0.1', port={up_port}, "
            "log_level='warning')")], f"http://127.0.0.1:{up_port}/v1/models"))
        upstream = f"http://127.0.0.1:{up_port}/v1"
        targets = {"direct": (f"{upstream}/chat/completions", {})}

        gw_port = free_port()
        (tmp / "gateway.yaml").write_text(
            "model_list:\n"
            "  - model_name: bench\n"
            f"    params: {{engine: openai, model: fake, api_base: '{upstream}'}}\n"
            "    model_info: {input_cost_per_token: 1.0e-7, output_cost_per_token: 4.0e-7}\n"
            "cache: {exact: false, semantic: false}\n"
            f"database_url: sqlite:///{tmp / 'usage.db'}\n")
        key = subprocess.run([sys.executable, "-m", "tokenomy", "keys", "create", "bench",
                              "--budget", "1000", "--config", str(tmp / "gateway.yaml")],
                             capture_output=True, text=True, check=True).stdout.split()[1]
        procs.append(start([sys.executable, "-m", "tokenomy", "serve", "--config",
                            str(tmp / "gateway.yaml"), "--port", str(gw_port)],
                           f"http://127.0.0.1:{gw_port}/healthz"))
        targets["tokenomy"] = (f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                               {"Authorization": f"Bearer {key}"})

        if Path(args.litellm).is_file():
            ll_port = free_port()
            (tmp / "litellm.yaml").write_text(
                "model_list:\n"
                "  - model_name: bench\n"
                f"    litellm_params: {{model: openai/fake, api_base: '{upstream}', "
                "api_key: none}\n")
            # it refuses to start without a master key; with one and no database, that key
            # is checked on every request (as tokenomy checks its key)
            master = "sk-bench-" + os.urandom(16).hex()
            procs.append(start([args.litellm, "--config", str(tmp / "litellm.yaml"), "--port",
                                str(ll_port), "--host", "127.0.0.1", "--num_workers", "1"],
                               f"http://127.0.0.1:{ll_port}/health/liveliness",
                               env={"LITELLM_MASTER_KEY": master}, timeout=180))
            targets["litellm"] = (f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                                  {"Authorization": f"Bearer {master}"})
        else:
            console.print(f"[yellow]litellm not found at {args.litellm}: create its venv with "
                          "`make litellm-venv` to compare[/yellow]")

        results = {}
        for name, (url, headers) in targets.items():
            console.print(f"measuring {name} ...")
            lat = asyncio.run(latency(url, args.requests, headers))
            rps, errors = asyncio.run(throughput(url, args.concurrency, args.duration, headers))
            results[name] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "rps": rps,
                             "errors": errors}
        report(results, args)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def report(results: dict, args) -> None:
    direct = results["direct"]
    table = Table(title=(f"Gateway overhead (measured: {args.requests} sequential requests for "
                         f"latency, {args.concurrency} concurrent clients x {args.duration:.0f} s "
                         f"for req/s; {os.cpu_count()} CPU cores shared by client, upstream "
                         "and proxy)"), title_justify="left")
    for col in ("target", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "max req/s",
                "req/s vs direct", "errors"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['p50'] * 1e3:.2f}", f"{r['p99'] * 1e3:.2f}",
                      "-" if name == "direct" else f"{(r['p50'] - direct['p50']) * 1e3:.2f}",
                      "-" if name == "direct" else f"{(r['p99'] - direct['p99']) * 1e3:.2f}",
                      f"{r['rps']:.0f}", f"{r['rps'] / direct['rps']:.2f}x", str(r["errors"]))
    console.print(table)
    if "litellm" in results:
        t, ll = results["tokenomy"], results["litellm"]
        console.print(
            f"tokenomy vs litellm: added p50 latency {(t['p50'] - direct['p50']) * 1e3:.2f} vs "
            f"{(ll['p50'] - direct['p50']) * 1e3:.2f} ms, max req/s ratio "
            f"{t['rps'] / ll['rps']:.2f}x")


if __name__ == "__main__":
    main()
