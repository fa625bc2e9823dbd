"""`tokenomy optimize` and `tokenomy report`: the cheapest deployment inside a quality
budget, measured where possible, with results.json and a self-contained report.html."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokenomy.cli.params import USD_PER_HOUR, Number, writable_dir, writable_file
from tokenomy.cli.quiet import library_output_to_log
from tokenomy.errors import InvalidInputError, problems

SAMPLES = Number(ge=1, le=100_000, integer=True)


@click.command()
@click.argument("model", required=False)
@click.option("--workload", "workloads", multiple=True, help="Workload(s); default: chat, batch.")
@click.option("--gpu", "gpus", multiple=True, help="GPU types (default: all in the catalog).")
@click.option("--scheme", "schemes", multiple=True, help="Schemes (default: all).")
@click.option("--max-kld", type=Number(ge=0, le=100), default=0.05, show_default=True,
              help="Max mean KL divergence against the base.")
@click.option("--max-kld-p99", type=Number(gt=0, le=1000), default=None,
              help="Max 99th percentile of KL divergence per token (the worst tokens).")
@click.option("--max-ppl-increase", type=Number(ge=0, le=10_000), default=5.0,
              show_default=True, help="Max perplexity increase, %.")
@click.option("--min-answer-agreement", type=Number(ge=0, le=1), default=0.0,
              show_default=True, help="Share of greedy answers equal to the base's.")
@click.option("--cpu-price", type=USD_PER_HOUR, help="$/hour of this machine's CPU target.")
@click.option("--windows", type=SAMPLES, default=16, show_default=True)
@click.option("--prompts", type=SAMPLES, default=16, show_default=True)
@click.option("--calibration-samples", type=SAMPLES, default=64, show_default=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Where candidates run: this machine, or a Ray cluster.")
@click.option("--ray-address", help="Ray cluster address (default: start a local instance).")
@click.option("--student", "students", multiple=True, type=click.Path(exists=True),
              help="A smaller model made from MODEL (tokenomy distill prune/train): "
              "compressed with the same schemes, measured against MODEL, priced beside it. "
              "Repeatable.")
@click.option("--output", "-o", type=click.Path(), help="New directory for the results.")
def optimize(model, workloads, gpus, schemes, max_kld, max_kld_p99, max_ppl_increase,
             min_answer_agreement, cpu_price, windows, prompts, calibration_samples,
             executor, ray_address, students, output) -> None:
    """Compress and evaluate MODEL with each scheme, cost every scheme x hardware, and
    recommend the cheapest deployment inside the quality budget, per workload. With
    --student, depth x bits candidates (a distilled student, quantized) sit beside the
    quantize-only ones on the same quality scale (KLD against MODEL)."""
    from tokenomy.evaluate import EvalConfig
    from tokenomy.optimize import Budget, Settings
    from tokenomy.optimize import optimize as run
    from tokenomy.optimize.cpu_speed import DEFAULT_CPU_USD_PER_HOUR
    from tokenomy.optimize.executors import make_executor
    from tokenomy.report.html import render

    out = Path(output or f"out/optimize/{dt.datetime.now():%Y%m%d-%H%M%S}")
    if (out / "results.json").exists():
        raise InvalidInputError(f"{out} already holds results; choose a new --output.")
    writable_dir(out, "--output")  # before minutes of compressing, not after
    budget = Budget(max_kld=max_kld, max_kld_p99=max_kld_p99,
                    max_ppl_increase_pct=max_ppl_increase,
                    min_answer_agreement=min_answer_agreement)
    settings = Settings(eval=EvalConfig(windows=windows, prompts=prompts),
                        calibration_samples=calibration_samples)
    console = Console()
    console.print(f"Measuring quality on {windows} x 512 held-out tokens and {prompts} "
                  f"prompts per scheme, {calibration_samples} calibration samples.")
    n = (len(schemes) + 1) * (1 + len(students)) - 1 if schemes else None
    with library_output_to_log("optimize") as _, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("compress + evaluate", total=n)

        def done(record) -> None:
            state = "cached" if record.cached else ("failed" if record.error else "measured")
            progress.console.print(f"  {record.scheme}: {state}")
            progress.advance(task)

        result = run(model, list(workloads) or ["chat", "batch"], list(gpus) or None,
                     list(schemes) or None, budget, settings,
                     cpu_usd_per_hour=cpu_price or DEFAULT_CPU_USD_PER_HOUR,
                     executor=make_executor(executor, ray_address), done=done,
                     students=list(students))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(result.model_dump_json(indent=2))
    (out / "report.html").write_text(render(result))
    summary(result, console)
    console.print(f"Wrote {out / 'results.json'} and {out / 'report.html'}")


def summary(result, console: Console) -> None:
    t = Table(title=f"Recommendations ({result.conditions})", title_justify="left")
    for col in ("workload", "scheme", "target", "$/1M out (band)", "cost is", "KLD",
                "verdict"):
        t.add_column(col)
    for s in result.selections:
        o = s.chosen
        if o is None:
            t.add_row(s.workload, "-", "-", "-", "-", "-", "nothing inside the budget")
            continue
        kld = "-" if o.kld is None else f"{o.kld:.4f}"
        t.add_row(s.workload, o.scheme, o.target, o.figure(),
                  "measured" if o.cost_measured else "estimated", kld, o.verdict)
    console.print(t)
    bases = sorted({s.chosen.cost_basis for s in result.selections
                    if s.chosen and s.chosen.cost_basis})
    for basis in bases:  # plain text: '[chat]' or a basis' brackets are not rich markup
        console.print(f"  cost: {basis}", markup=False)
    for s in result.selections:
        for reason in s.reasons[:4]:
            console.print(f"  [{s.workload}] {reason}", markup=False)
    if result.student_verdicts:
        console.print("Students (smaller models made from this one, quality measured against "
                      "it) against quantizing this one alone:")
    for line in result.student_verdicts:
        console.print(f"  {line}", markup=False)
    if result.cpu_selections:
        console.print("On this CPU (each engine's speed measured here), the engine to run:")
    for s in result.cpu_selections:
        o = s.chosen
        if o is None:
            console.print(f"  [{s.workload}] nothing inside the budget", markup=False)
            continue
        rivals = [r for r in s.reasons if r.startswith("best on ")]
        console.print(f"  [{s.workload}] {o.target.split(':')[0].removeprefix('cpu ')}: "
                      f"{o.scheme}, {o.layout}, {o.figure()} $/1M out"
                      + (f" ({'; '.join(rivals)})" if rivals else ""), markup=False)


@click.command()
@click.argument("results", type=click.Path(exists=True))
@click.option("--output", "-o", type=click.Path(), help="HTML file (default: beside results).")
def report(results, output) -> None:
    """Re-render report.html from a results.json."""
    from tokenomy.report.html import render

    target = Path(output) if output else Path(results).with_name("report.html")
    writable_file(target, "--output")
    result = _results(Path(results))
    target.write_text(render(result))
    Console().print(f"Wrote {target}")


# The files tokenomy writes, told apart by a field only each has.
_KINDS = {"runs": "a `tokenomy bench` result", "kld_mean": "a `tokenomy eval` result",
          "tau": "a `tokenomy route calibrate` calibration",
          "output_format": "a `tokenomy compress` manifest"}


def _results(path: Path):
    """An optimize results.json, or one error that says what the file is instead."""
    import json

    from pydantic import ValidationError

    from tokenomy.optimize import load_result

    if path.is_dir():
        path = path / "results.json"
        if not path.is_file():
            raise InvalidInputError(f"{path.parent} holds no results.json: give the "
                                    "results.json of a `tokenomy optimize` run")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise InvalidInputError(f"{path} is not a JSON file ({why}): give the results.json "
                                "of a `tokenomy optimize` run") from None
    other = next((kind for key, kind in _KINDS.items()
                  if isinstance(data, dict) and key in data), None)
    if not isinstance(data, dict) or "selections" not in data:
        raise InvalidInputError(f"{path} is {other or 'not a `tokenomy optimize` result'}: "
                                "give the results.json of a `tokenomy optimize` run")
    try:
        return load_result(path)
    except ValidationError as exc:
        raise InvalidInputError(f"{path} is not a valid `tokenomy optimize` result: "
                                f"{problems(exc)}") from None
