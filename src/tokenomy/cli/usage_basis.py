"""`tokenomy usage --basis allocation`: self-hosted deployments as a bill ($/hour x hours
run), each request's share of the busy time, and idle time as its own line."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table


def allocation_usage(by: str, since_days: float | None, db: str | None,
                     config_path: str | None, as_json: bool) -> None:
    from tokenomy.review import allocate, read_ledger
    from tokenomy.review.allocation import by_group
    from tokenomy.serve.config import load_config

    config = load_config(config_path)
    data = read_ledger(db or config.db_url, since_days * 86400 if since_days else None)
    alloc = allocate(data, config)
    groups = by_group(data, alloc, by)
    if as_json:
        click.echo(json.dumps({"basis": "allocation", "by": by, "groups": groups,
                               **alloc.to_dict()}, indent=2, default=str))
        return
    console = Console()
    t = Table(title="Self-hosted bills (allocation basis: $/hour x hours the gateway ran, "
                    "measured from the ledger's instance runs)", title_justify="left")
    for col in ("deployment", "$/hour", "hours run", "busy h", "util", "requests", "bill $",
                "allocated $", "idle $", "usage-basis $"):
        t.add_column(col, justify="left" if col == "deployment" else "right")
    for b in alloc.self_hosted:
        t.add_row(b.deployment, f"{b.usd_per_hour:g}", f"{b.hours_run:.4f}",
                  f"{b.busy_hours:.4f}", f"{b.utilization:.0%}", str(b.requests),
                  f"{b.bill_usd:.6f}", f"{b.allocated_usd:.6f}", f"{b.idle_usd:.6f}",
                  f"{b.usage_usd:.6f}")
    for a in alloc.api:
        t.add_row(a.deployment + " (API: usage basis)", "-", "-", "-", "-", str(a.requests),
                  f"{a.usage_usd:.6f}", f"{a.usage_usd:.6f}", "-", f"{a.usage_usd:.6f}")
    console.print(t)
    g = Table(title=f"Spend by {by}, allocation basis (idle self-hosted time on its own "
                    "lines; the total is the bill)", title_justify="left")
    for col in (by, "requests", "allocated $", "usage-basis $"):
        g.add_column(col, justify="left" if col == by else "right")
    for row in groups:
        g.add_row(row["group"], str(row["requests"]), f"{row['allocated_usd']:.6f}",
                  f"{row['usage_usd']:.6f}")
    g.add_row("total", str(sum(r["requests"] for r in groups)), f"{alloc.total_usd:.6f}",
              f"{sum(r['usage_usd'] for r in groups):.6f}")
    console.print(g)
    for note in alloc.notes:
        console.print(f"note: {note}")
