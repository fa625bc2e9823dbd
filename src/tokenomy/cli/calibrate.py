"""`tokenomy calibrate`: fit the planner to measurements and store a named profile."""

from __future__ import annotations

import click
from rich.console import Console


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "name", required=True,
              help="Profile name, stored under $TOKENOMY_HOME/profiles/NAME.json.")
@click.option("--replace", is_flag=True, help="Fit an existing profile anew.")
@click.option("--json", "as_json", is_flag=True)
def calibrate(inputs, name, replace, as_json) -> None:
    """Fit the planner's factors to INPUTS: `tokenomy bench` results (result.json) of one
    deployment (a CPU profile for this machine, or a GPU engine profile), or files of
    published-format rows (`measurements: [...]`). Use it with `bench --profile NAME`,
    `plan --profile NAME` or `model_info.profile` in a gateway config."""
    from tokenomy.calibrate import calibrate as fit

    console = Console(stderr=True)
    with console.status(f"fitting {name} to {len(inputs)} file(s) ..."):
        profile = fit(list(inputs), name, replace=replace)
    if as_json:
        click.echo(profile.model_dump_json(indent=2))
        return
    b = profile.band
    factors = ", ".join(f"{k} {v:.4g}" for k, v in profile.factors.items())
    Console().print(
        f"[bold]profile {profile.name}[/bold]: {profile.kind} {profile.engine} on "
        f"{profile.hardware}, {profile.model}; fitted on {profile.measurements} "
        f"measurements\n  factors: {factors}\n  band (measured / predicted speed, 10th-90th "
        f"percentile): {b.low:.2f}-{b.high:.2f}, median error {b.median_abs_error:.1%}\n"
        f"  use it: tokenomy {'bench' if profile.kind == 'cpu' else 'plan'} --profile "
        f"{profile.name}")
