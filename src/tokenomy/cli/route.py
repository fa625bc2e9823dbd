"""`tokenomy route`: calibrate the gateway's `model: auto` router on real answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tokenomy.cli.params import SEED, SHARE, Number, writable_file
from tokenomy.errors import InvalidInputError

SMALL_COUNT = Number(ge=1, le=100_000, integer=True)


@click.group()
def route() -> None:
    """The `model: auto` router: calibrate it, inspect a calibration, try a prompt."""


@route.command("calibrate")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              required=True, help="Gateway YAML with the deployments to route between.")
@click.option("--reference", help="The model name whose answers count as right (default: "
              "the dearest per token).")
@click.option("--dataset", default="sharegpt", show_default=True,
              help="'sharegpt' or a .jsonl of conversations (its calibration split is used).")
@click.option("--prompts", "n_prompts", type=SMALL_COUNT, default=80, show_default=True)
@click.option("--target-quality", type=SHARE, default=None,
              help="Share of answers that must agree with the reference's (default 0.9).")
@click.option("--target-cost-share", type=SHARE, default=None,
              help="Instead: the most to spend, as a share of all-to-the-reference.")
@click.option("--max-tokens", type=SMALL_COUNT, default=48, show_default=True)
@click.option("--answer-words", type=SMALL_COUNT, default=16, show_default=True,
              help="Answers agree when their first this many words are equal.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(dir_okay=False), required=True,
              help="New file for the calibration (set router.calibration to it).")
def calibrate_cmd(config_path, reference, dataset, n_prompts, target_quality,
                  target_cost_share, max_tokens, answer_words, seed, out) -> None:
    """Start the config's engines, have every deployment answer calibration prompts,
    label the answers against the reference's and choose the routing threshold for the
    target; write the calibration file the gateway loads."""
    from tokenomy.serve import running_engines
    from tokenomy.serve.config import load_config
    from tokenomy.serve.embed import Embedder
    from tokenomy.serve.meter import Meter
    from tokenomy.serve.router import DeploymentRef, calibrate, sample_prompts

    if target_quality is not None and target_cost_share is not None:
        raise InvalidInputError("give --target-quality or --target-cost-share, not both")
    if target_quality is None and target_cost_share is None:
        target_quality = 0.9
    out = Path(out)
    if out.exists():
        raise InvalidInputError(f"{out} exists: choose a new file (a calibration is never "
                                "overwritten)")
    writable_file(out, "--out")
    config = load_config(config_path)
    config.check_files()
    meter = Meter(config)
    rates = {d.id: meter.rate(d.id, 1.0) for d in config.model_list}
    by_name = {}
    for d in config.model_list:  # one deployment per model name: the first
        by_name.setdefault(d.model_name, d)
    if reference is None:
        reference = max(by_name, key=lambda n: rates[by_name[n].id].cost(200, max_tokens))
    elif reference not in by_name:
        raise InvalidInputError(f"--reference {reference!r} is not a model_name in "
                                f"{config_path} ({', '.join(by_name)})")
    priors = {name: _answer_agreement(d.model_info.quality) for name, d in by_name.items()}
    console = Console(stderr=True)
    prompts = sample_prompts(dataset, "calibration", n_prompts, seed)
    embedder = Embedder()  # bad input and a missing model fail before the engines start
    console.print(f"calibrating on {len(prompts)} {dataset} prompts; reference {reference}")
    with running_engines(config, progress=console.print) as upstreams:
        refs = [DeploymentRef(name=name, base_url=upstreams[d.id].base_url,
                              model=upstreams[d.id].model_id,
                              usd_per_input_token=rates[d.id].usd_per_input_token,
                              usd_per_output_token=rates[d.id].usd_per_output_token,
                              quality_prior=priors[name],
                              headers=upstreams[d.id].headers)
                for name, d in by_name.items()]
        calibration = asyncio.run(calibrate(
            refs, reference, prompts, embedder, target_quality=target_quality,
            target_cost_share=target_cost_share, max_tokens=max_tokens,
            answer_words=answer_words, step=console.print))
    calibration.save(out)
    render(calibration, Console())
    Console().print(f"Wrote {out}: set `router: {{calibration: {out}}}` in the gateway config")


def _answer_agreement(path) -> float | None:
    if path is None:
        return None
    try:
        return float(json.loads(Path(path).read_text())["answer_agreement"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"model_info.quality {path} is not a `tokenomy eval --json` "
                                f"result ({exc.__class__.__name__}: {exc})") from None


def render(c, console: Console) -> None:
    t = Table(title=f"Router calibration (measured: {c.conditions})", title_justify="left")
    for col in ("deployment", "$ / request", "agrees with reference", "prior",
                "routed (held out)"):
        t.add_column(col, justify="left" if col == "deployment" else "right")
    for name in c.by_cost():
        d = c.deployments[name]
        t.add_row(name + (" (reference)" if name == c.reference else ""),
                  f"{d.usd_per_request:.8f}", f"{sum(d.labels) / len(d.labels):.0%}",
                  f"{d.prior:.2f} ({d.prior_source})", f"{c.held_out.routed.get(name, 0):.0%}")
    console.print(t)
    target = (f"quality >= {c.target_quality:.0%}" if c.target_quality is not None
              else f"cost <= {c.target_cost_share:.1%} of the reference's")
    console.print(f"Target {target}: tau {c.tau:.3f}; held out (two-fold cross-fitted, "
                  f"{c.held_out.prompts} prompts): quality {c.held_out.quality:.0%}, cost "
                  f"{c.held_out.cost_share:.0%} of all-to-{c.reference}")


@route.command("show")
@click.argument("calibration", type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt", "prompts", multiple=True, help="Show the decision for this text.")
def show(calibration, prompts) -> None:
    """A calibration's deployments, threshold and held-out figures; with --prompt, where
    each prompt would go and why."""
    from tokenomy.serve.router import Calibration, Router

    c = Calibration.load(calibration)
    console = Console()
    render(c, console)
    if prompts:
        router = Router(c)
        for p in prompts:
            decision = router.decide(p, list(c.deployments))
            console.print(f"{p[:60]!r} -> {decision.deployment}: {decision.reason}")
