"""The report's section on per-tensor allocations (`--scheme auto` and
`auto:llmcompressor`): a layers x tensor-kind map coloured by the type each tensor got,
read from the artifact's tokenomy.json, and size on disk against measured KLD for every
measured scheme, the auto ones highlighted.

Results travel without their artifacts (a results.json copied to another machine): a
record whose directory or manifest is not here gets a note instead of a map.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from tokenomy.optimize import OptimizeResult
from tokenomy.optimize.measure import Record

AUTO_SCHEMES = ("auto", "auto:llmcompressor")
# fewest bits first: blues (4-bit), greens (5-bit), orange (8-bit), grey (16-bit)
TYPE_COLORS = {
    "Q4_0": "#9ecae1", "Q4_1": "#4292c6", "W4A16": "#4292c6",
    "Q5_0": "#a1d99b", "Q5_1": "#41ab5d",
    "Q8_0": "#fd8d3c", "W8A16": "#fd8d3c",
    "F16": "#bdbdbd", "BF16": "#bdbdbd", "F32": "#ffffff",
}
_OTHER_COLOR = "#e7b9ff"  # a type this table does not know
_LAYER = re.compile(r"(?:^|\.)(?:blk|layers|h|block)\.(\d+)\.(.+)$")


def section(r: OptimizeResult) -> str:
    """'' when no auto record was measured; else the maps and the frontier figure."""
    autos = [rec for rec in r.records if rec.scheme in AUTO_SCHEMES]
    if not autos:
        return ""
    parts = ["<h2>Per-tensor allocation (auto)</h2>"]
    for rec in autos:
        parts.append(f"<h3>{html.escape(rec.scheme)}</h3>" + _map_or_note(rec))
    parts.append(_frontier(r))
    return "\n".join(parts)


def tensor_types(rec: Record) -> tuple[dict[str, str] | None, str]:
    """(name -> type from the artifact's manifest, '') or (None, why not)."""
    from tokenomy.compress.artifact import read_manifest
    from tokenomy.errors import InvalidInputError

    if rec.artifact is None:
        return None, rec.error or "no artifact was written"
    directory = Path(rec.artifact)
    if not directory.is_dir():
        return None, (f"its artifact {rec.artifact} is not on this machine (results copied "
                      "from another one?)")
    try:
        manifest = read_manifest(directory)
    except InvalidInputError as e:
        return None, str(e)
    if manifest is None or not manifest.tensor_types:
        return None, f"{rec.artifact} has no tokenomy.json listing tensor types"
    return manifest.tensor_types, ""


def layer_grid(types: dict[str, str]) -> tuple[dict[int, dict[str, str]], list[str],
                                               dict[str, str]]:
    """(layer -> kind -> type, kinds in first-seen order, tensors outside the layers ->
    type); 1-D norms (F32, never chosen) are left out."""
    grid: dict[int, dict[str, str]] = {}
    kinds: dict[str, None] = {}
    outside: dict[str, str] = {}
    for name, qtype in types.items():
        short = name.removesuffix(".weight")
        if "norm" in short or qtype == "F32":
            continue
        match = _LAYER.search(short)
        if match is None:
            outside[short] = qtype
            continue
        kind = match.group(2).rsplit(".", 1)[-1]  # self_attn.q_proj -> q_proj
        grid.setdefault(int(match.group(1)), {})[kind] = qtype
        kinds.setdefault(kind)
    return grid, list(kinds), outside


def _cell(qtype: str, title: str) -> str:
    bg = TYPE_COLORS.get(qtype, _OTHER_COLOR)
    return (f'<td style="background:{bg};text-align:center" title="{html.escape(title)}">'
            f"{html.escape(qtype)}</td>")


def _map_or_note(rec: Record) -> str:
    types, why = tensor_types(rec)
    if types is None:
        return f"<p class=note>No per-layer map for {html.escape(rec.scheme)}: " \
               f"{html.escape(why)}.</p>"
    grid, kinds, outside = layer_grid(types)
    if not grid and not outside:
        return f"<p class=note>{html.escape(rec.scheme)}: no quantized tensors listed.</p>"
    rows = [f'<table class="allocation" id="map-{html.escape(rec.scheme)}"><tr><th>layer</th>'
            + "".join(f"<th>{html.escape(k)}</th>" for k in kinds) + "</tr>"]
    for layer in sorted(grid):
        cells = "".join(_cell(grid[layer][k], f"layer {layer} {k}") if k in grid[layer]
                        else "<td></td>" for k in kinds)
        rows.append(f"<tr><td>{layer}</td>{cells}</tr>")
    rows.append("</table>")
    if outside:
        rows.append("<table><tr><th>outside the layers</th>" + "".join(
            f"<th>{html.escape(n)}</th>" for n in outside) + "</tr><tr><td>type</td>" + "".join(
            _cell(t, n) for n, t in outside.items()) + "</tr></table>")
    return "\n".join(rows) + _legend(types) + _counts(types)


def _legend(types: dict[str, str]) -> str:
    present = sorted({t for t in types.values() if t != "F32"}, key=_order)
    chips = "".join(f'<span style="background:{TYPE_COLORS.get(t, _OTHER_COLOR)};'
                    f'padding:1px 6px;margin-right:6px;border:1px solid #ccc">'
                    f"{html.escape(t)}</span>" for t in present)
    return f"<p class=note>{chips}</p>"


def _counts(types: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for t in types.values():
        if t != "F32":
            counts[t] = counts.get(t, 0) + 1
    return ("<p class=note>Tensors per type: " + ", ".join(
        f"{n} {html.escape(t)}" for t, n in sorted(counts.items(), key=lambda x: _order(x[0])))
        + ".</p>")


def _order(qtype: str) -> tuple[int, str]:
    known = list(TYPE_COLORS)
    return (known.index(qtype) if qtype in known else len(known), qtype)


def _frontier(r: OptimizeResult) -> str:
    """Size on disk against measured mean KLD for every measured record."""
    points = [(rec.scheme, rec.size_on_disk_bytes / 1e6, rec.quality.kld_mean)
              for rec in r.records if rec.quality is not None and rec.size_on_disk_bytes]
    if not points:
        return "<p class=note>No measured scheme has a size on disk: no frontier figure.</p>"
    return (f'<figure id="auto-frontier">{_frontier_svg(points, r.budget.max_kld)}'
            "<figcaption>Size on disk against measured mean KLD (held-out split, vs the "
            "base; log, +1e-4) for every measured scheme: uniform schemes as dots, the "
            "per-tensor allocations (auto) as stars; dotted: the KLD budget."
            "</figcaption></figure>")


def _frontier_svg(points: list[tuple[str, float, float]], max_kld: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tokenomy.report.html import _svg  # one renderer: same salt, no date

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for is_auto, marker, color, size, label in (
            (False, "o", "#1a73e8", 40, "uniform scheme"),
            (True, "*", "#d93025", 220, "auto (per-tensor types)")):
        pts = [p for p in points if (p[0] in AUTO_SCHEMES) == is_auto]
        if not pts:
            continue
        ax.scatter([p[1] for p in pts], [p[2] + 1e-4 for p in pts], marker=marker, s=size,
                   color=color, zorder=3 if is_auto else 2, label=label)
        for name, mb, kld in pts:
            ax.annotate(name, (mb, kld + 1e-4), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    ax.axhline(max_kld, color="#d93025", ls=":", lw=1, label=f"budget: KLD {max_kld:g}")
    ax.set_yscale("log")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("mean KLD vs base (measured, log; +1e-4)")
    ax.set_title("Size against quality loss")
    ax.legend(fontsize=8)
    return _svg(fig)
