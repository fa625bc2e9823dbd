"""A review as a terminal table (rich) or a self-contained HTML page (no scripts, no
fonts, no network)."""

from __future__ import annotations

import html
import json

from rich.console import Console
from rich.table import Table

from tokenomy.review.finding import Finding
from tokenomy.review.run import Review

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right;vertical-align:top}th{background:#f4f4f4}
td.l,th.l{text-align:left}pre{background:#f6f8fa;padding:8px;white-space:pre-wrap;margin:0}
.note{color:#555;font-size:0.9em}.risk{color:#b3261e}section{margin:1.5em 0}
"""


def _usd(x: float) -> str:
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:,.6f}"


def _evidence(f: Finding) -> str:
    parts = [f"{k}={v:.6g}" if isinstance(v, float) else
             f"{k}={json.dumps(v, default=str)}" if isinstance(v, dict) else f"{k}={v}"
             for k, v in f.evidence.items()]
    return ", ".join(parts)


def print_table(r: Review, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]tokenomy review[/bold]: {r.conditions}")
    console.print(f"spend in the window: {_usd(r.spend_usd)} measured (metered per request); "
                  f"~{_usd(r.spend_usd * r.scale)}/month extrapolated")
    t = Table(title="Savings ranked by $/month", title_justify="left", show_lines=True)
    for col in ("#", "finding", "$/month", "in window", "basis", "evidence", "change"):
        t.add_column(col, justify="right" if col in ("#", "$/month", "in window") else "left",
                     overflow="fold")
    for i, f in enumerate(r.findings, 1):
        title = f.title + (" [red](risk)[/red]" if f.kind == "risk" else "")
        t.add_row(str(i), title, _usd(f.usd_month), _usd(f.usd_window), f.basis,
                  _evidence(f) + ("\nexamples: " + ", ".join(f.examples)
                                  if f.examples else ""),
                  f.change)
    console.print(t)
    if not r.findings:
        console.print("no savings found in this window")
    for f in r.findings:
        console.print(f"[dim]{f.id}: {f.basis}: {f.how}"
                      + "".join(f"; {c}" for c in f.caveats) + "[/dim]")
    for s in r.skipped:
        console.print(f"[yellow]not checked[/yellow] {s.id}: {s.reason}")


def to_json(r: Review) -> str:
    return json.dumps(r.to_dict(), indent=2, default=str)


def to_html(r: Review) -> str:
    e = html.escape
    rows = []
    for i, f in enumerate(r.findings, 1):
        evidence = "<br>".join(e(f"{k}: {json.dumps(v, default=str)}")
                               for k, v in f.evidence.items())
        if f.examples:
            evidence += "<br>examples: " + e(", ".join(f.examples))
        caveats = "".join(f"<div class=note>{e(c)}</div>" for c in f.caveats)
        rows.append(
            f"<tr><td>{i}</td><td class=\"l{' risk' if f.kind == 'risk' else ''}\">"
            f"<b>{e(f.title)}</b>{' (risk)' if f.kind == 'risk' else ''}"
            f"<div class=note>{e(f.how)}</div>{caveats}</td>"
            f"<td>{e(_usd(f.usd_month))}</td><td>{e(_usd(f.usd_window))}</td>"
            f"<td class=l>{e(f.basis)}</td><td class=l>{evidence}</td>"
            f"<td class=l><pre>{e(f.change)}</pre></td></tr>")
    bills = "".join(
        f"<tr><td class=l>{e(b.deployment)}</td><td>{b.usd_per_hour:g}</td>"
        f"<td>{b.hours_run:.4f}</td><td>{b.utilization:.1%}</td><td>{e(_usd(b.bill_usd))}</td>"
        f"<td>{e(_usd(b.allocated_usd))}</td><td>{e(_usd(b.idle_usd))}</td></tr>"
        for b in r.allocation.self_hosted)
    skipped = "".join(f"<li>{e(s.id)}: {e(s.reason)}</li>" for s in r.skipped)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>tokenomy review</title>
<style>{CSS}</style></head><body>
<h1>tokenomy review</h1>
<p class=note>Every dollar figure: {e(r.conditions)}. "measured" figures are sums of the
gateway's metered costs in the ledger; "estimated" ones say how they were estimated.</p>
<p>Spend in the window: <b>{e(_usd(r.spend_usd))}</b> measured;
~{e(_usd(r.spend_usd * r.scale))}/month extrapolated. Savings found:
<b>{e(_usd(r.total_month))}/month</b>.</p>
<section><h2>Savings ranked by $/month</h2>
<table><tr><th>#</th><th class=l>finding</th><th>$/month</th><th>in window</th>
<th class=l>basis</th><th class=l>evidence</th><th class=l>change</th></tr>
{''.join(rows) or '<tr><td colspan=7 class=l>no savings found in this window</td></tr>'}
</table></section>
<section><h2>Self-hosted bills (allocation basis)</h2>
<table><tr><th class=l>deployment</th><th>$/hour</th><th>hours run</th><th>busy</th>
<th>bill</th><th>allocated</th><th>idle</th></tr>{bills}</table></section>
{f'<section><h2>Not checked</h2><ul>{skipped}</ul></section>' if skipped else ''}
</body></html>
"""


__all__ = ["print_table", "to_html", "to_json"]
