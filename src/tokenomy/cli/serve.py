"""`tokenomy serve`, `tokenomy keys` and `tokenomy usage`: the gateway, its API keys and
what was spent."""

from __future__ import annotations

import datetime as dt
import json
import time

import click
from rich.console import Console
from rich.table import Table

from tokenomy.cli.params import PORT, Number
from tokenomy.errors import InvalidInputError

BUDGET = Number(ge=0, le=1e9)  # USD
RPM = Number(ge=1, le=1_000_000, integer=True)
DAYS = Number(gt=0, le=36_500)

_DB_HELP = "Usage database URL (default: the config's database_url, else SQLite in " \
           "$TOKENOMY_HOME/usage.db); postgresql://... for PostgreSQL."


@click.command()
@click.option("--config", "config_path", type=click.Path(),
              help="Gateway YAML (model_list, router, cache, database_url, general). Without "
                   "it: the embedded SmolLM2 on llama.cpp, SQLite ledger.")
@click.option("--host", default=None, help="Default 127.0.0.1 (the config's general.host).")
@click.option("--port", type=PORT, default=None, help="Default 4000 (general.port).")
@click.option("--db", default=None, help=_DB_HELP)
def serve(config_path, host, port, db) -> None:
    """Run the OpenAI-compatible gateway: starts the engines, then serves
    /v1/chat/completions, /v1/completions, /v1/models, /healthz and /metrics, metering
    every request. Ctrl-C drains in-flight requests and stops the engines."""
    from tokenomy.serve import serve as run
    from tokenomy.serve.config import load_config
    from tokenomy.serve.ledger_db import check_url

    config = load_config(config_path)
    if db:
        config = config.model_copy(update={"database_url": db})
    h, p = host or config.general.host, port or config.general.port
    _check_port(h, p)  # before the engines start, not after minutes of loading
    config.check_files()
    check_url(config.db_url)
    console = Console(stderr=True)
    console.print(f"[bold]tokenomy gateway[/bold]: {len(config.model_list)} deployment(s): "
                  + ", ".join(f"{d.id} ({d.params.engine})" for d in config.model_list))
    console.print(f"starting engines, then listening on http://{h}:{p}/v1 "
                  f"(ledger {_safe(config.db_url)})")
    run(config, host, port, progress=lambda msg: console.print(msg))


@click.group()
def keys() -> None:
    """Create, list, update and revoke the gateway's API keys (stored hashed)."""


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInputError(f"--host {host!r} cannot be resolved ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror}; stop "
                                    "what uses that port or pass --port N") from None


def _ledger(db: str | None, config_path: str | None, *, create: bool = False):
    """The ledger; only `keys create` makes one, the other commands read an existing one."""
    from tokenomy.serve.config import load_config
    from tokenomy.serve.ledger import Ledger

    url = db or load_config(config_path).db_url
    return Ledger(url, create=create)


_db = click.option("--db", default=None, help=_DB_HELP)
_config = click.option("--config", "config_path", type=click.Path(),
                       help="Gateway YAML whose database_url to use.")


@keys.command("create")
@click.argument("name")
@click.option("--budget", type=BUDGET, default=None, help="USD this key may spend in total.")
@click.option("--rpm", type=RPM, default=None, help="Requests per minute.")
@_db
@_config
def keys_create(name, budget, rpm, db, config_path) -> None:
    """Create a key; its secret is printed once and only its hash is kept."""
    key_id, secret = _ledger(db, config_path, create=True).create_key(name, budget, rpm)
    click.echo(f"{key_id}\t{secret}")
    Console(stderr=True).print("[yellow]Store the secret now: only its hash is kept.[/yellow]")


@keys.command("list")
@_db
@_config
@click.option("--json", "as_json", is_flag=True)
def keys_list(db, config_path, as_json) -> None:
    """Keys with their budgets, spend and limits."""
    rows = _ledger(db, config_path).keys()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    t = Table(title="API keys (spend measured by the gateway's meter)", title_justify="left")
    for col in ("id", "name", "budget $", "spent $", "in flight $", "req/min", "revoked"):
        t.add_column(col)
    for k in rows:
        t.add_row(k.id, k.name, "-" if k.budget_usd is None else f"{k.budget_usd:.6f}",
                  f"{k.spent_usd:.6f}", f"{k.reserved_usd:.6f}",
                  "-" if k.rpm_limit is None else str(k.rpm_limit), "yes" if k.revoked else "")
    Console().print(t)


@keys.command("update")
@click.argument("key_id")
@click.option("--budget", type=BUDGET, default=None, help="USD this key may spend in total.")
@click.option("--rpm", type=RPM, default=None, help="Requests per minute.")
@_db
@_config
def keys_update(key_id, budget, rpm, db, config_path) -> None:
    """Change a key's budget or rate limit."""
    if budget is None and rpm is None:
        raise InvalidInputError("nothing to update: give --budget USD and/or --rpm N")
    _ledger(db, config_path).update_key(key_id, budget_usd=budget, rpm_limit=rpm)
    click.echo(f"updated {key_id}")


@keys.command("revoke")
@click.argument("key_id")
@_db
@_config
def keys_revoke(key_id, db, config_path) -> None:
    """Refuse every further request with this key."""
    _ledger(db, config_path).update_key(key_id, revoked=True)
    click.echo(f"revoked {key_id}")


@click.command()
@click.option("--by", type=click.Choice(["key", "model", "day", "status"]), default="key",
              show_default=True)
@click.option("--since", type=DAYS, default=None, help="Only the last N days.")
@click.option("--basis", type=click.Choice(["usage", "allocation"]), default="usage",
              show_default=True,
              help="usage: each request's metered cost; allocation: self-hosted "
                   "deployments billed $/hour x hours run, idle time as its own line.")
@_db
@_config
@click.option("--json", "as_json", is_flag=True)
def usage(by, since, basis, db, config_path, as_json) -> None:
    """Spend by key, model (deployment), day or status, from the gateway's ledger."""
    if basis == "allocation":
        from tokenomy.cli.usage_basis import allocation_usage

        return allocation_usage(by, since, db, config_path, as_json)
    ledger = _ledger(db, config_path)
    start = time.time() - since * 86400 if since else None
    rows = ledger.summary(by, start)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    t = Table(title=f"Usage by {by} (metered per request; self-hosted $ from measured or "
                    "estimated throughput, see `price_basis` in the ledger)",
              title_justify="left")
    for col in (by, "requests", "prompt tok", "completion tok", "cached tok", "cache hits",
                "cost $", "mean latency s"):
        t.add_column(col, justify="left" if col == by else "right")
    for r in rows:
        t.add_row(str(r["group"]), str(r["requests"]), f"{r['prompt_tokens'] or 0:,}",
                  f"{r['completion_tokens'] or 0:,}", f"{r['cached_tokens'] or 0:,}",
                  str(r["cache_hits"] or 0), f"{r['cost_usd'] or 0:.6f}",
                  "-" if r["mean_latency_s"] is None else f"{r['mean_latency_s']:.2f}")
    Console().print(t)
    if not rows:
        click.echo(f"no requests recorded in {_safe(ledger.url)}"
                   + (f" since {dt.date.fromtimestamp(start)}" if start else ""))


def _safe(url: str) -> str:
    from tokenomy.serve.ledger_db import _safe as hide

    return hide(url)
