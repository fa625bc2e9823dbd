"""`tokenomy.bench`: how fast a deployment really is under a real workload, and what that
makes the $ per 1M tokens. Every figure in a BenchResult is MEASURED, except each run's
`estimate` (the planner's, for the same hardware and workload) beside it.

    from tokenomy.bench import BenchConfig, bench
    result = bench(BenchConfig(target="embedded", requests=8, max_output_tokens=32))
"""

from __future__ import annotations

from tokenomy.bench.client import BenchError
from tokenomy.bench.output import load_result, save
from tokenomy.bench.result import BenchConfig, BenchResult, BenchRun, LatencyStats, RunEstimate
from tokenomy.bench.runner import bench

__all__ = [
    "BenchConfig",
    "BenchError",
    "BenchResult",
    "BenchRun",
    "LatencyStats",
    "RunEstimate",
    "bench",
    "load_result",
    "save",
]
