"""`tokenomy bench --engine A --engine B` and `--compare A B`: one table of each engine's
measured tok/s and $/1M output tokens at each load, its start-up time, and the engine to
run at each load."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tokenomy.bench.compare import MIN_GOODPUT, Comparison, compare
from tokenomy.bench.result import BenchResult


def compare_saved(paths: tuple[str, ...], as_json: bool) -> None:
    from tokenomy.bench.output import load_result

    render_comparison([load_result(p) for p in paths], Console(stderr=as_json), as_json,
                      None)


def render_comparison(results: list[BenchResult], console: Console, as_json: bool,
                      directory: Path | None) -> Comparison:
    c = compare(results)
    if directory is not None:
        path = directory / "compare.json"
        with path.open("x") as f:  # never overwrites
            f.write(c.model_dump_json(indent=2))
        console.print(f"Wrote {path}")
    if as_json:
        click.echo(c.model_dump_json(indent=2))
        return c
    t = Table(title=f"Engines compared: {c.model} on {c.hardware} (measured; output tok/s "
                    "and $/1M output tokens at each concurrency)", title_justify="left")
    t.add_column("engine")
    t.add_column("start-up", justify="right")
    for level in c.levels:
        t.add_column(f"tok/s at {level}", justify="right")
        t.add_column(f"$/1M out at {level}", justify="right")
    for name in c.engines:
        row = [name, "-" if c.startup_s[name] is None else f"{c.startup_s[name]:.1f} s"]
        for level in c.levels:
            cell = c.cells[name].get(level)
            if cell is None:
                row += ["-", "-"]
                continue
            flag = "" if cell.ok else " (failures)"
            row += [f"{cell.output_tokens_per_s:.1f}{flag}",
                    "-" if cell.usd_per_1m_output is None else f"{cell.usd_per_1m_output:.4f}"]
        t.add_row(*row)
    console.print(t)
    console.print(f"Engine to run at each load (measured; SLOs TTFT <= {c.slo['ttft_s']:g} s, "
                  f"TPOT <= {c.slo['tpot_s']:g} s for {MIN_GOODPUT:.0%} of requests):")
    for p in c.picks:
        price = "-" if p.usd_per_1m_output is None else f"${p.usd_per_1m_output:.4f}/1M out"
        style = "" if p.meets_slo else "[yellow]"
        console.print(f"  {style}concurrency {p.concurrency}: {p.engine}, {price}, "
                      f"{p.output_tokens_per_s:.1f} tok/s ({p.reason})")
    return c
