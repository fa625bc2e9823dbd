"""`tokenomy compress`: make a compressed checkpoint (compressed-tensors or GGUF)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tokenomy.cli.params import SEED, Number, writable_dir
from tokenomy.cli.progress import reporter
from tokenomy.cli.quiet import library_output_to_log


@click.command()
@click.argument("model", required=False)
@click.option("--scheme", "-s", default="w4a16", show_default=True,
              help="Compression scheme (see --list).")
@click.option("--output", "-o", type=click.Path(), help="New directory to write (never reused).")
@click.option("--calibration", default="sharegpt", show_default=True,
              help="Calibration data: 'sharegpt' or a .jsonl file.")
@click.option("--calibration-samples", type=Number(ge=1, le=100_000, integer=True), default=64,
              show_default=True)
@click.option("--max-seq-length", type=Number(ge=16, le=1_000_000, integer=True), default=512,
              show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--max-kld", type=Number(gt=0, le=100), default=None,
              help="--scheme auto: mean KLD per token it may lose (measured, held-out).")
@click.option("--max-kld-p99", type=Number(gt=0, le=1000), default=None,
              help="--scheme auto: the 99th percentile of KLD per token it may reach "
              "(measured, held-out); alone or with --max-kld.")
@click.option("--size-mb", type=Number(gt=0, le=10_000_000), default=None,
              help="--scheme auto: the file size to reach, MB (10^6 bytes).")
@click.option("--types", "types", default=None, metavar="LIST",
              help="auto / auto:llmcompressor: the types it may choose, comma-separated "
              "(e.g. w4a16,bf16 for vLLM-CPU; q4_1,q5_1,q8_0). Default: all.")
@click.option("--imatrix", "imatrix", type=click.Path(dir_okay=False), default=None,
              help="auto / +imatrix schemes: a llama-imatrix file (.gguf or .dat) made on "
              "this model, used instead of computing one.")
@click.option("--list", "list_schemes", is_flag=True, help="List the schemes and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def compress(model, scheme, output, calibration, calibration_samples, max_seq_length, seed,
             max_kld, max_kld_p99, size_mb, types, imatrix, list_schemes, as_json) -> None:
    """Compress MODEL (HF directory or .gguf; default: the embedded SmolLM2-135M-Instruct)
    into a new directory with a tokenomy.json manifest."""
    from tokenomy.compress import SCHEMES
    from tokenomy.compress import compress as run

    console = Console(stderr=as_json)
    if list_schemes:
        table = Table(title="Compression schemes")
        for col in ("name", "backend", "algorithm", "calibration", "output", "description"):
            table.add_column(col, no_wrap=col == "name")
        for s in SCHEMES.values():
            table.add_row(s.name, s.backend, s.algorithm, "yes" if s.calibration else "no",
                          s.output_format, s.description + (f" {s.note}" if s.note else ""))
        console.print(table)
        return
    if not output:
        raise click.UsageError("missing -o/--output DIR (a new directory).")
    writable_dir(Path(output), "--output")  # before loading the model, not after
    with library_output_to_log("compress") as (stderr, _):
        if as_json:
            console = Console(file=stderr)
        with reporter(console) as step:
            manifest = run(model, scheme, output, calibration=calibration,
                           calibration_samples=calibration_samples,
                           max_seq_length=max_seq_length, seed=seed, step=step,
                           max_kld=max_kld, max_kld_p99=max_kld_p99, size_mb=size_mb,
                           imatrix=imatrix,
                           types=None if types is None else types.split(","))
    if as_json:
        click.echo(manifest.model_dump_json(indent=2))
        return
    m = manifest
    calib = (f"{m.calibration.samples} {m.calibration.dataset} samples, "
             f"{m.calibration.tokens:,} tokens" if m.calibration else "none")
    console.print(
        f"[green]Wrote {output}[/green] ({m.output_format}, {m.size_on_disk_bytes / 1e6:,.1f} MB)"
        f"\n  scheme {m.scheme.name} ({m.scheme.algorithm})"
        + (f"; {m.group_size_reason}" if m.group_size_reason else "")
        + f"\n  calibration: {calib}"
        f"\n  measured: {m.wall_time_s:.1f} s wall, peak RSS {m.peak_rss_bytes / 2**30:.2f} GiB"
        f" (estimated beforehand {m.estimated_peak_bytes / 2**30:.2f} GiB)"
        f"\n  verified: {m.verified}"
        + "".join(f"\n  note: {n}" for n in m.notes)
    )
    if m.tensor_types:
        counts: dict[str, int] = {}
        for qtype in m.tensor_types.values():
            counts[qtype] = counts.get(qtype, 0) + 1
        console.print("  tensor types: " + ", ".join(f"{n} {t}" for t, n in
                                                      sorted(counts.items())))
