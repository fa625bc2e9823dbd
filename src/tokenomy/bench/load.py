"""Load profiles: closed loop (N requests always in flight) and open loop (Poisson
arrivals at R requests/s). Both stop issuing requests after `requests` or `duration_s`,
whichever comes first; requests already in flight finish (each within `timeout_s`)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import httpx

from tokenomy.bench.client import RequestRecord, Target, stream_one
from tokenomy.bench.workload import BenchRequest

Progress = Callable[[int], None]  # called with the number of finished requests


def run_load(target: Target, requests: list[BenchRequest], *, concurrency: int | None,
             rate: float | None, duration_s: float, timeout_s: float, seed: int = 0,
             progress: Progress | None = None) -> tuple[list[RequestRecord], float]:
    """(records in issue order, wall seconds from the first request to the last end)."""
    return asyncio.run(_run(target, requests, concurrency, rate, duration_s, timeout_s,
                            seed, progress or (lambda _n: None)))


async def _run(target, requests, concurrency, rate, duration_s, timeout_s, seed, progress):
    slots = concurrency or len(requests)
    limits = httpx.Limits(max_connections=slots + 4, max_keepalive_connections=slots + 4)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    done: list[RequestRecord] = []

    async with httpx.AsyncClient(limits=limits, timeout=timeout,
                                 verify=target.verify) as client:
        t0 = time.perf_counter()

        async def send(i: int) -> None:
            done.append(await stream_one(client, target, requests[i], i, t0))
            progress(len(done))

        if rate is None:
            await _closed_loop(send, len(requests), concurrency or 1, t0 + duration_s)
        else:
            await _open_loop(send, len(requests), rate, duration_s, t0, random.Random(seed))
    records = sorted(done, key=lambda r: r.index)
    wall = max(r.end for r in records) - min(r.start for r in records) if records else 0.0
    return records, wall


async def _closed_loop(send, n: int, concurrency: int, deadline: float) -> None:
    pending = iter(range(n))

    async def worker() -> None:
        for i in pending:  # shared iterator: each index is taken once
            if time.perf_counter() >= deadline:
                return
            await send(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))


async def _open_loop(send, n: int, rate: float, duration_s: float, t0: float,
                     rng: random.Random) -> None:
    tasks, at = [], 0.0
    for i in range(n):
        if at >= duration_s:
            break
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
