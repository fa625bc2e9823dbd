"""`tokenomy review`: where the money goes and what would save the most, from the
gateway's ledger."""

from __future__ import annotations

from pathlib import Path

import click

from tokenomy.cli.params import writable_file


@click.command()
@click.option("--since", default="30d", show_default=True,
              help="The window to read: 30d, 12h, 90m, 2w.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "html"]),
              default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write to this file instead of the terminal.")
@click.option("--db", default=None, help="Usage database URL (default: the config's "
              "database_url, else SQLite in $TOKENOMY_HOME/usage.db).")
@click.option("--config", "config_path", type=click.Path(),
              help="The gateway YAML that served the traffic (prices, cache, router).")
def review(since, fmt, output, db, config_path) -> None:
    """Rank savings by $/month, each with its evidence and the config change: repeats
    the cache missed, shared prefixes, easy traffic on a dearer deployment, long
    histories, answers cut at max_tokens, failed spend, idle capacity, keys that will
    run out."""
    from tokenomy.review.data import parse_duration
    from tokenomy.review.render import print_table, to_html, to_json
    from tokenomy.review.run import review as run
    from tokenomy.serve.config import load_config

    window = parse_duration(since)
    if output is not None:
        writable_file(output, "--output")
    config = load_config(config_path)
    result = run(db or config.db_url, config, window)
    if fmt == "table":
        if output is None:
            print_table(result)
            return
        from rich.console import Console

        with output.open("w") as f:
            print_table(result, Console(file=f, width=200))
    else:
        text = to_json(result) if fmt == "json" else to_html(result)
        if output is None:
            click.echo(text)
        else:
            output.write_text(text)
    if output is not None:
        click.echo(f"wrote {output}")
