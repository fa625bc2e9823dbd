"""The crossover plot of `tokenomy plan --traffic ... --plot FILE`: monthly cost of
dedicated, autoscaled, serverless and API serving against traffic (the demand profile
scaled 0.1x-10x), the crossovers marked. PNG or SVG, or an HTML page with the SVG inline
beside the table (self-contained: no scripts, no network)."""

from __future__ import annotations

import html
import io
from pathlib import Path

from tokenomy.errors import InvalidInputError
from tokenomy.plan.traffic import TrafficEconomics

SUFFIXES = (".png", ".svg", ".html")
STYLE = {"dedicated": ("#1a73e8", "-"), "autoscaled": ("#137333", "-"),
         "serverless": ("#e37400", "--"), "api": ("#a142f4", "-.")}


def write_plot(econ: TrafficEconomics, path: Path) -> None:
    """Write the plot as PNG, SVG or HTML, by `path`'s suffix."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInputError(f"--plot {path}: the file must end in .png, .svg or .html.")
    try:
        if suffix == ".html":
            path.write_text(page(econ))
        else:
            _save(figure(econ), path, suffix[1:])
    except OSError as e:
        raise InvalidInputError(f"--plot {path} cannot be written "
                                f"({e.strerror or e.__class__.__name__}).") from None


def figure(econ: TrafficEconomics):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, p = econ.replica, econ.profile
    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = [s.mean_requests_per_s for s in econ.sweep]
    for option, (color, line) in STYLE.items():
        ys = [s.usd_per_month[option] for s in econ.sweep]
        if any(y is None for y in ys):
            continue  # no price for it
        ax.plot(xs, ys, line, color=color, lw=2, label=option)
    for c in econ.crossovers:
        ax.axvline(c.mean_requests_per_s, color="#888", ls=":", lw=1)
        ax.plot([c.mean_requests_per_s], [c.usd_per_month], "o", color="#d93025", zorder=5)
        ax.annotate(f"{c.below} -> {c.above}\n{c.mean_requests_per_s:.3g} req/s",
                    (c.mean_requests_per_s, c.usd_per_month), fontsize=8,
                    xytext=(5, 8), textcoords="offset points")
    ax.axvline(p.mean, color="#d93025", ls="--", lw=1,
               label=f"this profile: {p.mean:.3g} req/s mean (cheapest: {econ.cheapest})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"traffic: mean requests/s ({p.name} profile scaled 0.1x-10x)")
    ax.set_ylabel("$ per month (estimated)")
    ax.set_title(f"Monthly cost vs traffic (estimated): {r.scheme} on {r.gpus} x {r.gpu}, "
                 f"{r.requests_per_s:.3g} req/s per replica", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _save(fig, target, fmt: str) -> None:
    """Save and close; SVG without a date and with a fixed id salt (the same figures,
    the same bytes)."""
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.hashsalt": "tokenomy"}):
        fig.savefig(target, format=fmt, bbox_inches="tight", dpi=120,
                    metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)


def page(econ: TrafficEconomics) -> str:
    """A self-contained HTML page: the options table, the plot (inline SVG), assumptions."""
    buf = io.StringIO()
    _save(figure(econ), buf, "svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(o.option)}</td><td>{_usd(o.usd_per_month)}</td>"
        f"<td>{'-' if o.utilization is None else f'{o.utilization:.0%}'}</td>"
        f"<td>{o.cold_start_share:.2%}</td><td>{esc(o.detail)}</td>"
        f"<td class=note>{esc(o.assumptions)}</td></tr>" for o in econ.options)
    crossings = "".join(f"<li>{esc(c.below)} &rarr; {esc(c.above)} at "
                        f"{c.mean_requests_per_s:.3g} req/s mean ({c.level:.2g}x)</li>"
                        for c in econ.crossovers) or "<li>none between 0.1x and 10x</li>"
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>tokenomy: traffic economics"
        "</title><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        ".note{color:#555;font-size:0.85em}</style></head><body>"
        f"<h1>Traffic economics (estimated)</h1><p>{esc(econ.method)}.</p>"
        "<table><tr><th>option</th><th>$/month</th><th>utilization</th>"
        f"<th>cold starts</th><th>what</th><th>assumptions</th></tr>{rows}</table>"
        f"<p>Cheapest at this traffic: <b>{esc(econ.cheapest)}</b>. Crossovers:</p>"
        f"<ul>{crossings}</ul><figure>{svg}</figure></body></html>\n")


def _usd(x: float | None) -> str:
    return "no price" if x is None else f"${x:,.0f}"


__all__ = ["SUFFIXES", "figure", "page", "write_plot"]
