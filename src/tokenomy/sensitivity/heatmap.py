"""The layers x types picture: one panel per type, rows = layers, columns = the tensor
kinds of a layer, colour = log10 of the estimated added KLD. Needs matplotlib (the
`report` extra)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tokenomy.compress.auto.table import Table
from tokenomy.errors import InvalidInputError

_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def grid(table: Table, qtype: str) -> tuple[np.ndarray, list[str], list[str]]:
    """[rows, kinds] of log10 KLD (NaN where absent); row labels; kind labels. Tensors
    outside the layers (embedding, output) are a row of their own."""
    kinds, layers, cells = [], [], {}
    for row in table.rows:
        m = _LAYER.fullmatch(row.name)
        label, kind = (f"layer {int(m[1]):02d}", m[2]) if m else ("outside", row.name[:-7])
        if kind not in kinds:
            kinds.append(kind)
        if label not in layers:
            layers.append(label)
        cells[label, kind] = row.kld.get(qtype)
    out = np.full((len(layers), len(kinds)), np.nan)
    for (label, kind), value in cells.items():
        if value is not None:
            out[layers.index(label), kinds.index(kind)] = np.log10(max(value, 1e-12))
    return out, layers, kinds


def draw(table: Table, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InvalidInputError("the heatmap needs matplotlib: pip install "
                                "'tokenomy[report]'.") from e
    types = table.config.types
    grids = [grid(table, t) for t in types]
    finite = np.concatenate([g[0][np.isfinite(g[0])] for g in grids])
    lo, hi = (finite.min(), finite.max()) if finite.size else (-12, 0)
    rows = len(grids[0][1])
    fig, axes = plt.subplots(1, len(types), figsize=(2.2 * len(types) + 1, 0.22 * rows + 2),
                             sharey=True, squeeze=False)
    for ax, qtype, (values, layers, kinds) in zip(axes[0], types, grids, strict=True):
        image = ax.imshow(values, aspect="auto", cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(qtype)
        ax.set_xticks(range(len(kinds)), kinds, rotation=90, fontsize=7)
        ax.set_yticks(range(len(layers)), layers, fontsize=6)
    fig.colorbar(image, ax=axes[0].tolist(), label="log10 estimated added mean KLD")
    fig.suptitle("Sensitivity: estimated KLD added by quantizing one tensor")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
