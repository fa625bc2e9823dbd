"""A bench's files: result.json and plot.png in a new directory (never overwritten)."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

from tokenomy.bench.result import BenchResult
from tokenomy.errors import InvalidInputError

RESULT_FILE, PLOT_FILE = "result.json", "plot.png"


def default_dir(root: Path = Path("results/bench")) -> Path:
    """results/bench/<timestamp>, with -2, -3 ... when that name is taken."""
    base = root / f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_free(directory: Path) -> None:
    for name in (RESULT_FILE, PLOT_FILE):
        if (directory / name).exists():
            raise InvalidInputError(f"{directory / name} already exists; bench never "
                                    "overwrites a result: choose a new --out directory.")


def save(result: BenchResult, directory: Path) -> tuple[Path, Path]:
    check_free(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, png_path = directory / RESULT_FILE, directory / PLOT_FILE
    with json_path.open("x") as f:  # 'x': fail rather than overwrite, even in a race
        f.write(result.model_dump_json(indent=2))
    plot(result, png_path)
    return json_path, png_path


def load_result(path: str | Path) -> BenchResult:
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        return BenchResult.model_validate_json(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path} is not a `tokenomy bench` result ({e}).") from e


def plot(r: BenchResult, path: Path) -> None:
    """Throughput against observed concurrency (measured and estimated), and latency
    percentiles against it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((x for x in r.runs if x.requests_ok), key=lambda x: x.concurrency_observed)
    conc = [x.concurrency_observed for x in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(conc, [x.output_tokens_per_s for x in runs], "o-", color="#1a73e8",
              label="output tokens/s (measured)")
    left.plot(conc, [x.total_tokens_per_s for x in runs], "s-", color="#137333",
              label="total tokens/s (measured)")
    est = [(c, x.estimate) for c, x in zip(conc, runs, strict=True) if x.estimate]
    if est:
        left.plot([c for c, _ in est], [e.output_tokens_per_s for _, e in est], "o--",
                  color="#1a73e8", alpha=0.5, label="output tokens/s (estimated)")
        left.plot([c for c, _ in est], [e.total_tokens_per_s for _, e in est], "s--",
                  color="#137333", alpha=0.5, label="total tokens/s (estimated)")
    left.set_xlabel("requests in flight (observed, time-average)")
    left.set_ylabel("tokens/s")
    left.set_ylim(bottom=0)
    left.set_title(f"Throughput: {r.model} on {r.hardware}")
    left.legend(fontsize=8)
    for attr, name, color in (("ttft_s", "TTFT", "#d93025"), ("tpot_s", "TPOT", "#e37400"),
                              ("itl_s", "ITL", "#9334e6")):
        for pct, style in (("p50", "o-"), ("p99", "^:")):
            values = [getattr(getattr(x, attr), pct) for x in runs]
            pts = [(c, v) for c, v in zip(conc, values, strict=True) if v is not None]
            right.plot([c for c, _ in pts], [v for _, v in pts], style, color=color,
                       label=f"{name} {pct}")
    right.axhline(r.slo["ttft_s"], color="#d93025", lw=0.8, ls="--", label="TTFT SLO")
    right.axhline(r.slo["tpot_s"], color="#e37400", lw=0.8, ls="--", label="TPOT SLO")
    right.set_yscale("log")
    right.set_xlabel("requests in flight (observed, time-average)")
    right.set_ylabel("seconds (measured, log)")
    right.set_title("Latency percentiles")
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(textwrap.fill(f"tokenomy bench, measured: {r.conditions}", 200), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
