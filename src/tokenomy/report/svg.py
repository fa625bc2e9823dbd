"""Plots as inline SVG written directly, without matplotlib: for pages that must render
fast and carry no dependency beyond the standard library (the gateway's /dashboard).
The report/ modules that draw with matplotlib take ~300 ms a figure on a small CPU; these
take microseconds. Text is drawn in the page's own font stack: nothing is fetched.

Each function returns one `<svg>` element; labels are escaped here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

PALETTE = ("#1a73e8", "#e37400", "#137333", "#a142f4", "#d93025", "#12b5cb",
           "#f9ab00", "#5f6368", "#b31412", "#0d652d")
_FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _ticks(top: float, n: int = 4) -> list[float]:
    """n+1 evenly spaced round values from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** (len(f"{int(raw)}") - 1) if raw >= 1 else _small_magnitude(raw)
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(n + 1)]


def _small_magnitude(raw: float) -> float:
    mag = 1.0
    while mag > raw:
        mag /= 10
    return mag


def stacked_bars(labels: Sequence[str], series: dict[str, Sequence[float]], *,
                 fmt: Callable[[float], str] = "{:g}".format, width: int = 560,
                 height: int = 190, title: str = "") -> str:
    """Bars over `labels` (time buckets), each split by `series` (name -> one value per
    label), stacked in the dict's order; a legend under the plot."""
    left, right, top, bottom = 64, 10, 18, 34
    n = max(1, len(labels))
    totals = [sum(v[i] for v in series.values()) for i in range(len(labels))]
    ticks = _ticks(max(totals, default=0.0))
    plot_w, plot_h = width - left - right, height - top - bottom
    scale = plot_h / ticks[-1]
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.8)
    legend_rows = (len(series) + 2) // 3
    total_h = height + 16 * legend_rows
    out = [f'<svg width="{width}" height="{total_h}" '
           f'viewBox="0 0 {width} {total_h}" role="img" {_FONT}>',
           f"<title>{escape(title)}</title>" if title else ""]
    for t in ticks:
        y = top + plot_h - t * scale
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#e0e0e0"/><text x="{left - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end" fill="#555">{escape(fmt(t))}</text>')
    for i in range(len(labels)):
        x, base = left + i * slot + (slot - bar_w) / 2, top + plot_h
        for j, (name, values) in enumerate(series.items()):
            h = values[i] * scale
            if h <= 0:
                continue
            base -= h
            out.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" '
                       f'height="{h:.1f}" fill="{color(j)}"><title>{escape(labels[i])} '
                       f'{escape(name)}: {escape(fmt(values[i]))}</title></rect>')
    every = max(1, -(-len(labels) // 8))  # at most ~8 axis labels
    for i in range(0, len(labels), every):
        x = left + (i + 0.5) * slot
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                   f'fill="#555">{escape(labels[i])}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
               f'y2="{top + plot_h}" stroke="#888"/>')
    out.append(_legend(list(series), left, height - 6))
    out.append("</svg>")
    return "".join(out)


def _legend(names: list[str], x0: int, y0: int) -> str:
    parts = []
    for j, name in enumerate(names):
        x, y = x0 + (j % 3) * 165, y0 + (j // 3) * 16
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color(j)}"/>'
                     f'<text x="{x + 14}" y="{y}">{escape(name[:22])}</text>')
    return "".join(parts)


def hbars(rows: Sequence[tuple[str, Sequence[float]]], names: Sequence[str], *,
          fmt: Callable[[float], str] = "{:g}".format, limits: Sequence[float | None] = (),
          width: int = 560, title: str = "") -> str:
    """Horizontal grouped bars: one group per row (label, one value per name); `limits`
    (one per row, or None) draws a red mark at that value, e.g. a budget."""
    left, right, bar_h, gap = 190, 70, 10, 10
    group_h = bar_h * len(names) + gap
    legend_y = 14
    height = legend_y + 10 + group_h * max(1, len(rows))
    top_value = max([v for _, vs in rows for v in vs] +
                    [m for m in limits if m is not None] + [0.0])
    scale = (width - left - right) / (top_value or 1.0)
    out = [f'<svg width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" {_FONT}>',
           f"<title>{escape(title)}</title>" if title else "",
           _legend(list(names), 10, legend_y)]
    for r, (label, values) in enumerate(rows):
        y0 = legend_y + 10 + r * group_h
        out.append(f'<text x="{left - 6}" y="{y0 + group_h / 2:.1f}" text-anchor="end">'
                   f"{escape(label[:30])}</text>")
        for j, v in enumerate(values):
            y, w = y0 + j * bar_h, max(0.0, v * scale)
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 1}" '
                       f'fill="{color(j)}"><title>{escape(label)} {escape(names[j])}: '
                       f'{escape(fmt(v))}</title></rect><text x="{left + w + 4:.1f}" '
                       f'y="{y + bar_h - 2}" fill="#555">{escape(fmt(v))}</text>')
        limit = limits[r] if r < len(limits) else None
        if limit is not None:
            x = left + limit * scale
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0 - 2}" '
                       f'y2="{y0 + bar_h * len(names) + 2}" stroke="#d93025" '
                       f'stroke-width="2"/>')
    out.append("</svg>")
    return "".join(out)


__all__ = ["PALETTE", "color", "hbars", "stacked_bars"]
