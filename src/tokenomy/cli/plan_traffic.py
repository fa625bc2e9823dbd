"""`tokenomy plan --traffic ...`: the options, their checks, and the table of what the
recommended deployment costs under a demand profile, dedicated, autoscaled, serverless or
by API (plan/traffic.py), with the crossovers and the plot (report/traffic_plot.py)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tokenomy.cli.params import Number, writable_file
from tokenomy.errors import InvalidInputError

USD_PER_M = Number(ge=0, le=10_000)
OPTIONS = [
    click.option("--traffic", default=None, metavar="SHAPE|FILE|ledger:DB_URL",
                 help="Price the recommendation under an hourly demand profile: diurnal, "
                      "bursty, flat (x the workload's rate), a .yaml/.csv of 24 (or 168) "
                      "hourly values, or ledger:DB_URL (the gateway's usage ledger)."),
    click.option("--min-replicas", type=Number(ge=0, le=10_000, integer=True),
                 help="Autoscaled: never fewer replicas than this (default 1)."),
    click.option("--cold-start", type=Number(ge=0, le=3600),
                 help="Seconds to start a replica or container, billed (default 60)."),
    click.option("--idle-timeout", type=Number(ge=0, le=86_400),
                 help="Serverless: seconds a container stays warm after its last request "
                      "(default 60, Modal's)."),
    click.option("--serverless-price", type=Number(gt=0, le=10), metavar="USD_PER_GPU_S",
                 help="Serverless $ per GPU-second (default: the catalog's, by GPU)."),
    click.option("--api-price", default=None, metavar="IN:OUT",
                 help="Hosted API list price, $ per 1M input:output tokens, e.g. 0.2:0.6 "
                      "(default: the catalog's, by model or size)."),
    click.option("--training-cost", type=Number(ge=0, le=1e12), metavar="USD",
                 help="Training or fine-tuning cost, against inference over the life."),
    click.option("--life-months", type=Number(gt=0, le=600),
                 help="The model's expected life in months (default 12)."),
    click.option("--plot", default=None, type=click.Path(dir_okay=False, path_type=Path),
                 help="Write the monthly cost vs traffic plot: FILE.png, .svg or .html."),
]


def traffic_options(command):
    for option in reversed(OPTIONS):
        command = option(command)
    return command


def traffic_config(traffic, min_replicas, cold_start, idle_timeout, serverless_price,
                   api_price, training_cost, life_months, plot):
    """(TrafficConfig or None, plot path or None), checked before any planning."""
    from tokenomy.plan.traffic import TrafficConfig
    from tokenomy.report.traffic_plot import SUFFIXES

    given = {"--min-replicas": min_replicas, "--cold-start": cold_start,
             "--idle-timeout": idle_timeout, "--serverless-price": serverless_price,
             "--api-price": api_price, "--training-cost": training_cost,
             "--life-months": life_months, "--plot": plot}
    if traffic is None:
        stray = [name for name, value in given.items() if value is not None]
        if stray:
            raise InvalidInputError(f"{', '.join(stray)} {'needs' if len(stray) == 1 else 'need'}"
                                    " a demand profile: add --traffic "
                                    "diurnal|bursty|flat|FILE|ledger:DB_URL.")
        return None, None
    if plot is not None:
        if plot.suffix.lower() not in SUFFIXES:
            raise InvalidInputError(f"--plot {plot}: the file must end in .png, .svg or .html.")
        writable_file(plot, "--plot")
    config = TrafficConfig(
        profile=traffic, min_replicas=min_replicas, cold_start_s=cold_start,
        idle_timeout_s=idle_timeout, serverless_usd_per_gpu_s=serverless_price,
        api_usd_per_m=_api_price(api_price) if api_price is not None else None,
        training_usd=training_cost, life_months=life_months)
    return config, plot


def _api_price(text: str) -> tuple[float, float]:
    left, sep, right = text.partition(":")
    if not sep:
        raise InvalidInputError(f"--api-price {text!r}: expected IN:OUT, $ per 1M input "
                                "and output tokens, e.g. --api-price 0.2:0.6.")
    return (USD_PER_M.range.parse(left.strip(), "--api-price IN ($ per 1M input tokens)"),
            USD_PER_M.range.parse(right.strip(), "--api-price OUT ($ per 1M output tokens)"))


def write_plot(result, plot: Path | None) -> None:
    if plot is not None and result.traffic is not None:
        from tokenomy.report.traffic_plot import write_plot as write

        write(result.traffic, plot)


def render_traffic(result, console: Console, plot: Path | None) -> None:
    econ = result.traffic
    if econ is None:
        console.print("[red]Traffic economics: no scheme x GPU fits or meets the targets, so "
                      "there is no replica to price.[/red]")
        return
    console.print(_table(econ))
    lines = [f"cheapest at this traffic: [bold]{econ.cheapest}[/bold]"]
    crossings = "; ".join(f"{c.below} -> {c.above} at {c.mean_requests_per_s:.3g} req/s "
                          f"mean ({c.level:.2g}x)" for c in econ.crossovers)
    lines.append("crossovers (the profile scaled 0.1x-10x): " + (crossings or "none"))
    if econ.training_usd is not None:
        best = next(o for o in econ.options if o.option == econ.cheapest)
        lines.append(f"lifetime over {econ.life_months:g} months: training "
                     f"${econ.training_usd:,.0f} is {best.training_share:.0%} of "
                     f"${best.lifetime_usd:,.0f} ({econ.cheapest})")
    if plot is not None:
        lines.append(f"plot: {plot}")
    how = [f"{o.option}: {o.assumptions}" for o in econ.options] + [econ.method]
    console.print("\n".join(lines))
    console.print(Panel("\n".join(how), title="How (traffic estimates)", expand=False))


def _table(econ) -> Table:
    p, r = econ.profile, econ.replica
    t = Table(title=f"Monthly cost by how it is served (estimated): {p.name} profile, "
              f"{p.mean:.3g} req/s mean, {p.peak:.3g} peak; one replica = {r.gpus} x {r.gpu} "
              f"{r.scheme}, {r.requests_per_s:.3g} req/s at the SLO, ${r.usd_per_hour:.3g}/h")
    cols = ["option", "$/month", "utilization", "cold starts", "what"]
    if econ.training_usd is not None:
        cols += [f"lifetime $ ({econ.life_months:g} mo)", "training share"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("option", "what") else "right")
    for o in econ.options:
        cells = [o.option, "no price" if o.usd_per_month is None else f"{o.usd_per_month:,.0f}",
                 "-" if o.utilization is None else f"{o.utilization:.0%}",
                 f"{o.cold_start_share:.2%}", o.detail]
        if econ.training_usd is not None:
            cells += ["-" if o.lifetime_usd is None else f"{o.lifetime_usd:,.0f}",
                      "-" if o.training_share is None else f"{o.training_share:.0%}"]
        t.add_row(*cells, style="bold green" if o.option == econ.cheapest else None)
    return t


__all__ = ["render_traffic", "traffic_config", "traffic_options", "write_plot"]
