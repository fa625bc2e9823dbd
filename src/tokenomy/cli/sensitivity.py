"""`tokenomy sensitivity`: which tensors lose quality when quantized, and how much."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tokenomy.cli.params import SEED, Number, writable_dir, writable_file
from tokenomy.cli.progress import reporter
from tokenomy.cli.quiet import library_output_to_log


@click.command()
@click.argument("model", required=False)
@click.option("--calibration", default="sharegpt", show_default=True,
              help="Calibration data: 'sharegpt' or a .jsonl file (its calibration split).")
@click.option("--windows", type=Number(ge=1, le=10_000, integer=True), default=16,
              show_default=True, help="Calibration windows for the Fisher estimate.")
@click.option("--window-tokens", type=Number(ge=8, le=100_000, integer=True), default=256,
              show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--no-imatrix", is_flag=True, help="Plain round-to-nearest round trips.")
@click.option("--imatrix", "imatrix", type=click.Path(dir_okay=False), default=None,
              help="A llama-imatrix file (.gguf or .dat) made on this model, used instead "
              "of the computed importance matrix.")
@click.option("--save-imatrix", type=click.Path(dir_okay=False), default=None,
              help="Write the importance matrix for llama-quantize --imatrix (.dat: legacy "
              "format, otherwise GGUF).")
@click.option("--swaps", type=Number(ge=0, le=10_000, integer=True), default=8,
              show_default=True, help="Tensors quantized alone and measured (0: none).")
@click.option("--swap-type", default="Q4_0", show_default=True)
@click.option("--top", type=Number(ge=1, le=10_000, integer=True), default=15,
              show_default=True)
@click.option("--output", "-o", type=click.Path(), default="sensitivity", show_default=True,
              help="Directory for sensitivity.json and sensitivity.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sensitivity(model, calibration, windows, window_tokens, seed, no_imatrix, imatrix,
                save_imatrix, swaps, swap_type, top, output, as_json) -> None:
    """Estimated KLD added by quantizing each tensor of MODEL (GGUF or HF directory;
    default: the embedded SmolLM2) to each llama.cpp block type, confirmed by single
    swaps; a layers x types heatmap and the JSON go to --output."""
    from tokenomy.sensitivity import SensitivityConfig
    from tokenomy.sensitivity import sensitivity as run
    from tokenomy.sensitivity.heatmap import draw

    out = Path(output)
    writable_dir(out, "--output")
    if save_imatrix:
        writable_file(Path(save_imatrix), "--save-imatrix")
    config = SensitivityConfig(dataset=calibration, windows=windows, window_tokens=window_tokens,
                               seed=seed, imatrix=not no_imatrix)
    console = Console(stderr=as_json)
    with library_output_to_log("sensitivity") as (stderr, _):
        if as_json:
            console = Console(file=stderr)
        with reporter(console) as step:
            result = run(model, config, swaps=swaps, swap_type=swap_type.upper(), step=step,
                         imatrix=imatrix, save_imatrix=save_imatrix)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(result.model_dump_json(indent=2))
    picture = draw(result.table, out / "sensitivity.png")
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    table = Table(title=f"Most sensitive tensors at {result.swap_type} (estimated added mean KLD)")
    table.add_column("tensor", no_wrap=True)
    for qtype in result.table.config.types:
        table.add_column(qtype, justify="right")
    for row in result.top(result.swap_type, top):
        table.add_row(row.name, *(f"{row.kld[t]:.2e}" if t in row.kld else "-"
                                  for t in result.table.config.types))
    console.print(table)
    for s in result.swaps:
        console.print(f"  swap {s.tensor} -> {s.type}: estimated {s.estimated_kld:.2e}, "
                      f"measured {s.measured_kld:.2e}")
    if result.spearman is not None:
        console.print(f"  Spearman (estimate vs measured, {len(result.swaps)} swaps): "
                      f"{result.spearman:.2f}")
    console.print(f"  conditions: {result.conditions}\n  wrote {out / 'sensitivity.json'}, "
                  f"{picture}" + (f", {save_imatrix}" if save_imatrix else ""))
