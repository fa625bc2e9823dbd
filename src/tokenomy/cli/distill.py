"""`tokenomy distill`: a smaller model made from the user's own. `prune` drops the blocks
that cost least (measured); `train` recovers the student by logit distillation."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import ProgressColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tokenomy.cli.params import COUNT, SEED, Number, writable_dir
from tokenomy.cli.progress import reporter
from tokenomy.cli.quiet import library_output_to_log

DEPTH = Number(ge=0, le=100_000, integer=True)  # 0 is refused with the model's depth named


@click.group()
def distill() -> None:
    """A smaller model from yours: drop layers (prune), then distill on your traffic (train)."""


@distill.command()
@click.argument("model", required=False)
@click.option("--drop", type=DEPTH, help="Transformer blocks to remove.")
@click.option("--keep-layers", type=DEPTH, help="Transformer blocks to keep.")
@click.option("--output", "-o", type=click.Path(), help="New directory to write (never reused).")
@click.option("--dataset", default="sharegpt", show_default=True,
              help="Calibration text: 'sharegpt' or a .jsonl file (calibration split).")
@click.option("--windows", type=COUNT, default=4, show_default=True)
@click.option("--window-tokens", type=Number(ge=8, le=100_000, integer=True), default=256,
              show_default=True)
@click.option("--candidates", type=COUNT, default=6, show_default=True,
              help="Best-ranked blocks re-measured at each greedy step.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def prune(model, drop, keep_layers, output, dataset, windows, window_tokens, candidates, seed,
          as_json) -> None:
    """Remove the transformer blocks of MODEL (HF dir or .gguf; default: the embedded
    SmolLM2-135M-Instruct) whose removal costs least, measured as KL divergence from the
    model itself on calibration text, and write the student to a new directory."""
    from pydantic import ValidationError

    from tokenomy.distill import PruneConfig
    from tokenomy.distill import prune as run
    from tokenomy.distill.layers import check_decoder
    from tokenomy.distill.prune import check_output, default_output
    from tokenomy.errors import InvalidInputError, problems
    from tokenomy.sources import resolve_source

    try:
        config = PruneConfig(drop=drop, keep_layers=keep_layers, dataset=dataset,
                             windows=windows, window_tokens=window_tokens,
                             candidates=candidates, seed=seed)
    except ValidationError as exc:
        raise InvalidInputError(problems(exc)) from None
    source = resolve_source(model)
    if source.kind == "hf":  # a GGUF is checked once converted, inside prune
        config.target(check_decoder(source.path))
    output = Path(output) if output else default_output(model, config)
    check_output(output)
    writable_dir(output, "--output")
    console = Console(stderr=as_json)
    with library_output_to_log("distill") as (stderr, _):
        if as_json:
            console = Console(file=stderr)
        with reporter(console) as step:
            manifest = run(model, output, config, step=step)
    if as_json:
        click.echo(manifest.model_dump_json(indent=2))
        return
    table = Table(title=f"Blocks removed from {manifest.teacher.layers} (measured on "
                        f"{manifest.calibration['tokens']} calibration tokens of {dataset})")
    for col in ("block", "KLD alone", "KLD after removal", "block influence",
                "angular distance"):
        table.add_column(col, justify="right")
    for r in manifest.layers_removed:
        table.add_row(str(r.index), f"{r.kld_alone:.4f}", f"{r.kld_after:.4f}",
                      f"{r.block_influence:.4f}", f"{r.angular_distance:.4f}")
    console.print(table)
    console.print(f"[green]Wrote {output}[/green]: {manifest.layers} of "
                  f"{manifest.teacher.layers} layers. Recover it with `tokenomy distill train "
                  f"{output} --teacher {model or '(embedded)'} --tokens N`.")



@distill.command()
@click.argument("student", type=click.Path(exists=True))
@click.option("--teacher", help="The model to match (default: the one the student's "
              "tokenomy.json names; the embedded SmolLM2 for a pruned embedded model).")
@click.option("--tokens", type=Number(ge=1, le=2_000_000_000, integer=True),
              help="Training tokens (sets the schedule).")
@click.option("--minutes", type=Number(gt=0, le=43_200), help="Wall-time bound of the run.")
@click.option("--objective", type=click.Choice(["kd", "ce"]), default="kd", show_default=True,
              help="kd: forward KL on the teacher's top-k; ce: next-token cross entropy.")
@click.option("--dataset", default="sharegpt", show_default=True,
              help="'sharegpt' or a .jsonl file (its calibration split).")
@click.option("--window-tokens", type=Number(ge=8, le=100_000, integer=True), default=256,
              show_default=True)
@click.option("--batch-windows", type=COUNT, default=4, show_default=True,
              help="Windows per optimizer step.")
@click.option("--topk", type=COUNT, default=32, show_default=True)
@click.option("--lr", type=Number(gt=0, le=1), default=1e-4, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="bf16: autocast (fast on AMX/AVX-512 CPUs and GPUs).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--checkpoint-minutes", type=Number(gt=0, le=10_000), default=5.0,
              show_default=True)
@click.option("--checkpoint-steps", type=COUNT, help="Also checkpoint every N steps.")
@click.option("--keep-state", is_flag=True,
              help="Keep checkpoint/ and teacher_cache/ in the output after the run.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --output.")
@click.option("--output", "-o", type=click.Path(), help="New directory to write (never reused).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def train(student, teacher, tokens, minutes, objective, dataset, window_tokens, batch_windows,
          topk, lr, precision, seed, checkpoint_minutes, checkpoint_steps, keep_state, resume,
          output, as_json) -> None:
    """Recover STUDENT (an HF dir, e.g. from `distill prune`) by offline logit distillation:
    the teacher's top-k log-probabilities are cached once, then the student is trained to
    match them (forward KL). Checkpoints every few minutes; --resume continues."""
    from pydantic import ValidationError

    from tokenomy.distill.train import TrainConfig
    from tokenomy.distill.train import train as run
    from tokenomy.errors import InvalidInputError, problems

    try:
        config = TrainConfig(objective=objective, tokens=tokens, minutes=minutes,
                             dataset=dataset, window_tokens=window_tokens,
                             batch_windows=batch_windows, topk=topk, lr=lr,
                             precision=precision, seed=seed,
                             checkpoint_minutes=checkpoint_minutes,
                             checkpoint_steps=checkpoint_steps, keep_state=keep_state)
    except ValidationError as exc:
        raise InvalidInputError(problems(exc)) from None
    if not resume:
        config.check()
    output = Path(output) if output else Path(f"{Path(student).name}-{objective}")
    writable_dir(output, "--output")
    console = Console(stderr=as_json)
    with library_output_to_log("distill") as (stderr, _):
        if as_json:
            console = Console(file=stderr)
        with reporter(console, extra=(TokensPerSecond(config.step_tokens),
                                              TimeRemainingColumn())) as step:
            manifest = run(student, teacher, output, config, resume=resume, step=step)
    if as_json:
        click.echo(manifest.model_dump_json(indent=2))
        return
    last = manifest.runs[-1]
    first_loss = last.loss_curve[0][1] if last.loss_curve else float("nan")
    final_loss = last.loss_curve[-1][1] if last.loss_curve else float("nan")
    console.print(f"[green]Wrote {output}[/green]: {last.objective} on {last.tokens:,} tokens "
                  f"of {last.dataset} in {last.seconds:.0f} s, loss {first_loss:.4f} -> "
                  f"{final_loss:.4f} (measured). Check it with `tokenomy eval {output} --base "
                  f"{manifest.teacher.path}`.")


class TokensPerSecond(ProgressColumn):
    """tokens/s of the training bar (its steps times tokens per step), from rich's speed."""

    def __init__(self, step_tokens: int):
        super().__init__()
        self.step_tokens = step_tokens

    def render(self, task) -> Text:
        if not str(task.description).startswith("training") or not task.speed:
            return Text("")
        return Text(f"{task.speed * self.step_tokens:,.0f} tok/s")
