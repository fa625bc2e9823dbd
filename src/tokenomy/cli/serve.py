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


_period = click.option(
    "--period", type=click.Choice(["daily", "weekly", "monthly", "none"]), default=None,
    help="The budget resets each UTC day, ISO week (from Monday) or calendar month; "
         "none: a lifetime budget.")
_soft = click.option("--soft-limit", "soft_limit", type=BUDGET, default=None,
                     help="USD spent in a period that fires --webhook (once per period).")
_webhook = click.option("--webhook", default=None,
                        help="URL POSTed JSON when the soft limit is reached.")
_tag = click.option("--tag", "tags", multiple=True,
                    help="A default tag of the key's requests (repeatable), e.g. "
                         "feature:search; a request's own tag of the same NAME wins.")


@keys.command("create")
@click.argument("name")
@click.option("--budget", type=BUDGET, default=None,
              help="USD this key may spend in total (per --period when given).")
@_period
@_soft
@_webhook
@_tag
@click.option("--rpm", type=RPM, default=None, help="Requests per minute.")
@_db
@_config
def keys_create(name, budget, period, soft_limit, webhook, tags, rpm, db,
                config_path) -> None:
    """Create a key; its secret is printed once and only its hash is kept."""
    key_id, secret = _ledger(db, config_path, create=True).create_key(
        name, budget, rpm, period=None if period == "none" else period,
        soft_limit_usd=soft_limit, webhook_url=webhook, tags=tags)
    click.echo(f"{key_id}\t{secret}")
    Console(stderr=True).print("[yellow]Store the secret now: only its hash is kept.[/yellow]")


@keys.command("list")
@_db
@_config
@click.option("--json", "as_json", is_flag=True)
def keys_list(db, config_path, as_json) -> None:
    """Keys with their budgets, periods, spend this period and limits."""
    ledger = _ledger(db, config_path)
    rows, now = ledger.keys(), ledger.clock()
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "spent_this_period_usd": r.spent_now(now),
                                "remaining_usd": _remaining(r, now)} for r in rows],
                              indent=2))
        return
    t = Table(title="API keys (spend measured by the gateway's meter)", title_justify="left")
    for col in ("id", "name", "budget $", "period", "period start (UTC)", "spent $",
                "in flight $", "remaining $", "soft limit $", "req/min", "tags", "revoked"):
        t.add_column(col)
    for k in rows:
        start = (dt.datetime.fromtimestamp(k.period_start, dt.UTC).strftime("%Y-%m-%d")
                 if k.budget_period and k.period_start is not None else "-")
        remaining = _remaining(k, now)
        t.add_row(k.id, k.name, "-" if k.budget_usd is None else f"{k.budget_usd:.6f}",
                  k.budget_period or "-", start, f"{k.spent_now(now):.6f}",
                  f"{k.reserved_usd:.6f}", "-" if remaining is None else f"{remaining:.6f}",
                  "-" if k.soft_limit_usd is None else f"{k.soft_limit_usd:.6f}",
                  "-" if k.rpm_limit is None else str(k.rpm_limit), ",".join(k.tags),
                  "yes" if k.revoked else "")
    Console().print(t)


def _remaining(key, now: float) -> float | None:
    if key.budget_usd is None:
        return None
    return max(0.0, key.budget_usd - key.spent_now(now) - key.reserved_usd)


@keys.command("update")
@click.argument("key_id")
@click.option("--budget", type=BUDGET, default=None,
              help="USD this key may spend in total (per --period when it has one).")
@_period
@_soft
@_webhook
@_tag
@click.option("--clear-tags", is_flag=True, help="Remove the key's default tags.")
@click.option("--rpm", type=RPM, default=None, help="Requests per minute.")
@_db
@_config
def keys_update(key_id, budget, period, soft_limit, webhook, tags, clear_tags, rpm, db,
                config_path) -> None:
    """Change a key's budget, period, soft limit, webhook, default tags or rate limit
    (--tag replaces the key's tags)."""
    if clear_tags and tags:
        raise InvalidInputError("give --tag or --clear-tags, not both")
    new_tags = () if clear_tags else (tags or None)
    if all(v is None for v in (budget, period, soft_limit, webhook, new_tags, rpm)):
        raise InvalidInputError("nothing to update: give --budget USD, --period, "
                                "--soft-limit USD, --webhook URL, --tag, --clear-tags "
                                "and/or --rpm N")
    _ledger(db, config_path).update_key(key_id, budget_usd=budget, rpm_limit=rpm,
                                        period=period, soft_limit_usd=soft_limit,
                                        webhook_url=webhook, tags=new_tags)
    click.echo(f"updated {key_id}")


@keys.command("revoke")
@click.argument("key_id")
@_db
@_config
def keys_revoke(key_id, db, config_path) -> None:
    """Refuse every further request with this key."""
    _ledger(db, config_path).update_key(key_id, revoked=True)
    click.echo(f"revoked {key_id}")


def _grouping(_ctx, _param, value: str) -> str:
    from tokenomy.serve.usage_report import GROUPINGS

    if value in GROUPINGS[:-1] or (value.startswith("tag:") and len(value) > 4):
        return value
    raise click.BadParameter(f"{value!r}: use one of {', '.join(GROUPINGS)}")


@click.command()
@click.option("--by", default="key", show_default=True, callback=_grouping,
              help="key, model, day, status, user (end user), feature, or tag:NAME (the "
                   "value of each request's NAME:value tag).")
@click.option("--since", type=DAYS, default=None, help="Only the last N days.")
@click.option("--basis", type=click.Choice(["usage", "allocation"]), default="usage",
              show_default=True,
              help="usage: each request's metered cost; allocation: self-hosted "
                   "deployments billed $/hour x hours run, idle time as its own line.")
@_db
@_config
@click.option("--json", "as_json", is_flag=True)
def usage(by, since, basis, db, config_path, as_json) -> None:
    """Spend by key, model (deployment), day, status, end user, feature or tag, from the
    gateway's ledger. Each request's cost is rounded once to integer micro-dollars, and
    groups and the total are sums of those: the printed parts add up to the total."""
    if basis == "allocation":
        from tokenomy.cli.usage_basis import allocation_usage

        return allocation_usage(by, since, db, config_path, as_json)
    ledger = _ledger(db, config_path)
    start = time.time() - since * 86400 if since else None
    rows = ledger.summary(by, start)
    if as_json:
        from tokenomy.serve.usage_report import total

        click.echo(json.dumps({"basis": "usage", "by": by, "groups": rows,
                               "total": total(rows)}, indent=2, default=str))
        return
    _usage_table(by, rows)
    if not rows:
        click.echo(f"no requests recorded in {_safe(ledger.url)}"
                   + (f" since {dt.date.fromtimestamp(start)}" if start else ""))


def _usage_table(by: str, rows: list[dict]) -> None:
    from tokenomy.serve.usage_report import total, usd

    t = Table(title=f"Usage by {by} (metered per request; self-hosted $ from measured or "
                    "estimated throughput, see `price_basis` in the ledger)",
              title_justify="left")
    for col in (by, "requests", "prompt tok", "completion tok", "cached tok", "cache hits",
                "cost $", "mean latency s"):
        t.add_column(col, justify="left" if col == by else "right")
    for r in [*rows, total(rows)]:
        latency = r.get("mean_latency_s")
        t.add_row(str(r["group"]), str(r["requests"]), f"{r['prompt_tokens']:,}",
                  f"{r['completion_tokens']:,}", f"{r['cached_tokens']:,}",
                  str(r["cache_hits"]), usd(r["cost_micro_usd"]),
                  "-" if latency is None else f"{latency:.2f}",
                  end_section=r is rows[-1] if rows else False)
    Console().print(t)


def _safe(url: str) -> str:
    from tokenomy.serve.ledger_db import _safe as hide

    return hide(url)
