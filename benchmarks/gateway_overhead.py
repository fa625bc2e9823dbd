"""What the gateway adds: latency (p50/p99) and the most requests/s, against the same
upstream called directly and through the litellm proxy.

    python benchmarks/gateway_overhead.py [--requests 300] [--concurrency 32]
        [--duration 15] [--rounds 3] [--litellm PATH/TO/litellm]

The upstream is tests/fake_upstream.py (an OpenAI-compatible server answering at once)
in its own process, so the numbers are the proxies' own cost. tokenomy runs with its
full path on (key lookup, atomic budget admission, SQLite ledger row per request,
Prometheus metrics), cache off. litellm runs from its own venv (`make litellm-venv`),
without a database.

Latency: sequential requests from an httpx client, each proxy's interleaved one for one
with the direct call, so a change in the machine's load falls on both alike; a proxy's
added p50 is over the direct p50 measured beside it (tokenomy's before litellm starts:
its process keeps working between requests). Requests/s: `--concurrency` clients
in a closed loop, on kept-alive connections of tokenomy.serve.http1 (about 0.05 ms of
CPU a request: with httpx, at about 1.2 ms, the load generator saturates first and caps
every target near the same figure); `--rounds` slices of `--duration / rounds` seconds
per target, in rotation. Client, upstream and proxy share this machine's cores, and
other jobs may share them too: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def latency(targets: dict, n: int) -> dict[str, list[float]]:
    """Sequential requests, one to each target in turn: each one's round trip, in
    seconds, by target. `targets`: {name: (base URL, headers)}."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    clients = {name: httpx.AsyncClient(timeout=30) for name in targets}
    try:
        for i in range(5 + n):  # 5 to warm up
            for name, (base, headers) in targets.items():
                t = time.perf_counter()
                r = await clients[name].post(f"{base}/chat/completions", json=BODY,
                                             headers=headers)
                if i >= 5:
                    out[name].append(time.perf_counter() - t)
                r.raise_for_status()
    finally:
        for client in clients.values():
            await client.aclose()
    return out


async def throughput(base: str, headers: dict, concurrency: int, duration: float) -> tuple:
    """Closed loop: `concurrency` clients for `duration` seconds; (requests done, seconds,
    errors)."""
    from tokenomy.serve import http1

    pool, to, body = http1.Pool(), http1.target(base, headers), json.dumps(BODY).encode()
    done, errors = 0, 0
    stop = time.perf_counter() + duration

    async def worker():
        nonlocal done, errors
        while time.perf_counter() < stop:
            try:
                status, _ = await pool.post(to, "/chat/completions", body, timeout=30)
                done += status == 200
                errors += status != 200
            except httpx.HTTPError:  # what http1 raises
                errors += 1

    start_t = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        pool.close()
    return done, time.perf_counter() - start_t, errors


def measure_latency(targets: dict, name: str, results: dict, args) -> None:
    """`name`'s latency interleaved with the direct call's, into `results`."""
    console.print(f"measuring latency of {name} beside direct ...")
    lat = asyncio.run(latency({n: targets[n] for n in ("direct", name)}, args.requests))
    results.setdefault("direct", {"p50": pct(lat["direct"], 50),
                                  "p99": pct(lat["direct"], 99)})
    results[name] = {"p50": pct(lat[name], 50), "p99": pct(lat[name], 99),
                     "direct_p50": pct(lat["direct"], 50), "direct_p99": pct(lat["direct"], 99)}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
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
        targets = {"direct": (upstream, {})}

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
        targets["tokenomy"] = (f"http://127.0.0.1:{gw_port}/v1",
                               {"Authorization": f"Bearer {key}"})

        results = {}
        measure_latency(targets, "tokenomy", results, args)  # before litellm (and its
        # background work) is started
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
            targets["litellm"] = (f"http://127.0.0.1:{ll_port}/v1",
                                  {"Authorization": f"Bearer {master}"})
            measure_latency(targets, "litellm", results, args)
        else:
            console.print(f"[yellow]litellm not found at {args.litellm}: create its venv with "
                          "`make litellm-venv` to compare[/yellow]")

        totals = {name: [0, 0.0, 0] for name in targets}  # done, seconds, errors
        for r in range(args.rounds):
            for name, (base, headers) in targets.items():
                console.print(f"measuring req/s of {name} (round {r + 1}/{args.rounds}) ...")
                done, seconds, errors = asyncio.run(throughput(
                    base, headers, args.concurrency, args.duration / args.rounds))
                total = totals[name]
                total[0], total[1], total[2] = (total[0] + done, total[1] + seconds,
                                                total[2] + errors)
                time.sleep(1.0)  # let its background work finish before the next one
        for name, (done, seconds, errors) in totals.items():
            results[name].update(rps=done / seconds, errors=errors)
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
    table = Table(title=(f"Gateway overhead (measured: {args.requests} sequential requests, "
                         "each proxy's interleaved with direct ones, for latency; "
                         f"{args.concurrency} concurrent clients x {args.duration:.0f} s in "
                         f"{args.rounds} rotating rounds for req/s; {os.cpu_count()} CPU cores "
                         "shared by client, upstream and proxy)"), title_justify="left")
    for col in ("target", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
                "added p50 vs direct p50", "max req/s", "req/s vs direct", "errors"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, r in results.items():
        added = (None if name == "direct" else
                 (r["p50"] - r["direct_p50"], r["p99"] - r["direct_p99"]))
        table.add_row(name, f"{r['p50'] * 1e3:.2f}", f"{r['p99'] * 1e3:.2f}",
                      "-" if added is None else f"{added[0] * 1e3:.2f}",
                      "-" if added is None else f"{added[1] * 1e3:.2f}",
                      "-" if added is None else f"{added[0] / r['direct_p50']:.2f}x",
                      f"{r['rps']:.0f}", f"{r['rps'] / direct['rps']:.2f}x", str(r["errors"]))
    console.print(table)
    if "litellm" in results:
        t, ll = results["tokenomy"], results["litellm"]
        console.print(
            f"tokenomy vs litellm: added p50 latency {(t['p50'] - t['direct_p50']) * 1e3:.2f} "
            f"vs {(ll['p50'] - ll['direct_p50']) * 1e3:.2f} ms, max req/s ratio "
            f"{t['rps'] / ll['rps']:.2f}x")


if __name__ == "__main__":
    main()
