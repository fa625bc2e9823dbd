"""The CPU planner against this machine, uncalibrated and calibrated, side by side.

    python benchmarks/cpu_calibration.py [--requests 12] [--first 1] [--second 4]

1. `tokenomy bench` on the embedded deployment at concurrency FIRST: measured output
   tok/s against the uncalibrated roofline's estimate (issue 12: within 20%).
2. `tokenomy calibrate` on that result: a CPU profile for this machine.
3. `tokenomy bench` at concurrency SECOND with the profile: measured against the
   calibrated estimate (issue 12: within 15%), and against the uncalibrated one.
ShareGPT prompts (<= 512 in / 128 out tokens), llama.cpp's server, all cores; the bench
client shares the machine, as it does in any run here.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tokenomy.bench import BenchConfig, bench, save
from tokenomy.calibrate import calibrate


def _run(concurrency: int, requests: int, calibration: str | None = None):
    return bench(BenchConfig.build(concurrency=concurrency, requests=requests,
                                   calibration=calibration)).runs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--second", type=int, default=4)
    args = parser.parse_args()
    console = Console(width=150)
    with tempfile.TemporaryDirectory() as tmp:
        console.print(f"bench at concurrency {args.first} (uncalibrated) ...")
        first = bench(BenchConfig.build(concurrency=args.first, requests=args.requests))
        path, _ = save(first, Path(tmp) / "first")
        profile = calibrate([path], "cpu-calibration-benchmark", replace=True)
        console.print(f"calibrated: {profile.factors}")
        console.print(f"bench at concurrency {args.second}, uncalibrated and calibrated ...")
        plain = _run(args.second, args.requests)
        fitted = _run(args.second, args.requests, profile.name)
    table = Table(title="CPU planner vs tokenomy bench (output tok/s; ratio = measured / "
                        "estimated)")
    for col in ("run", "measured", "estimated", "ratio", "target"):
        table.add_column(col)
    r0 = first.runs[0]
    table.add_row(f"concurrency {args.first}, uncalibrated", f"{r0.output_tokens_per_s:.1f}",
                  f"{r0.estimate.output_tokens_per_s:.1f}",
                  f"{r0.ratio_output_tokens_per_s:.2f}", "within 20%")
    for label, run, target in ((f"concurrency {args.second}, uncalibrated", plain, "-"),
                               (f"concurrency {args.second}, calibrated", fitted,
                                "within 15%")):
        table.add_row(label, f"{run.output_tokens_per_s:.1f}",
                      f"{run.estimate.output_tokens_per_s:.1f}",
                      f"{run.ratio_output_tokens_per_s:.2f}", target)
    console.print(table)
    console.print(f"conditions: {first.conditions}")


if __name__ == "__main__":
    main()
