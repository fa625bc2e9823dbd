"""The planner against published measurements: fitted on one part, checked on the other.

    python benchmarks/plan_calibration.py [--write] [--json]

Each row of published_measurements.yaml names a model, GPU (x count), scheme, engine and
version, batch and lengths, and one measured figure with its source. The rows are split
once by a hash of each row (tokenomy.plan.fit.Measurement.held_out) into a fitting part
and a held-out part. Each engine profile (engine x version family) with at least
MIN_ROWS fitting rows gets its efficiency factors fitted there (least squares on log
ratios, catalog priors); the held-out rows are predicted with the fitted factors and
never used to fit. Printed for both parts, before and after the fit: median |error|,
share of rows within 25%, share over-predicted (measured slower than predicted).
`--write` stores the fitted factors and their error bands in
src/tokenomy/catalog/engine_fits.yaml, which `plan` then uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from tokenomy.catalog import Catalog
from tokenomy.plan.fit import Measurement, band, fit_engine, predict, summary

HERE = Path(__file__).parent
FITS = HERE.parent / "src" / "tokenomy" / "catalog" / "engine_fits.yaml"
MIN_ROWS = 3


def load_rows() -> list[Measurement]:
    raw = yaml.safe_load((HERE / "published_measurements.yaml").read_text())["measurements"]
    return [Measurement.model_validate(r) for r in raw]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {FITS.name}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    catalog = Catalog.load()  # the priors: engines.yaml as written, no earlier fit
    rows = load_rows()
    by_engine: dict[str, list[Measurement]] = defaultdict(list)
    for row in rows:
        by_engine[_prior(catalog, row).name].append(row)
    fitted, ratios_before, ratios_after = {}, {}, {}
    for name, members in sorted(by_engine.items()):
        prior = catalog.engines[name]
        fitting = [r for r in members if not r.held_out]
        engine = prior
        if len(fitting) >= MIN_ROWS:
            engine = fit_engine(fitting, prior, catalog).engine
            fitted[name] = engine
        for r in members:
            ratios_before[r.id] = r.speed_ratio(predict(r, prior, catalog))
            ratios_after[r.id] = r.speed_ratio(predict(r, engine, catalog))
        if name in fitted:  # the band from every row of this engine, held-out ones included:
            # their residuals are the out-of-sample evidence of how far off it may be
            fitted[name] = engine.model_copy(update={"band": band(
                [ratios_after[r.id] for r in members],
                basis=f"published measurements ({len(fitting)} fitted, "
                      f"{len(members) - len(fitting)} held out)")})
    if args.json:
        print(json.dumps([{**r.model_dump(), "id": r.id, "held_out": r.held_out,
                           "ratio_before": ratios_before[r.id],
                           "ratio_after": ratios_after[r.id]} for r in rows], indent=2))
        return
    console = Console(width=170)
    console.print(_table(rows, ratios_before, ratios_after, catalog))
    for part, held in (("fitting part", False), ("held-out part", True)):
        subset = [r.id for r in rows if r.held_out == held]
        for label, ratios in (("before fit", ratios_before), ("after fit", ratios_after)):
            s = summary([ratios[i] for i in subset])
            console.print(f"{part:13} {label:10}: {s['rows']:3d} rows, median |error| "
                          f"{s['median_abs_error']:.1%}, within 25% {s['within_25']:.0%}, "
                          f"over-predicted {s['over_predicted']:.0%}")
    for name, engine in fitted.items():
        eff, b = engine.efficiency, engine.band
        console.print(f"{name}: decode_bandwidth {eff.decode_bandwidth:.3f}, compute "
                      f"{eff.compute:.3f}, step_overhead_ms {eff.step_overhead_ms:.2f}, "
                      f"layer_overhead_us {eff.layer_overhead_us:.1f}, "
                      f"sequence_overhead_us {eff.sequence_overhead_us:.1f}; band "
                      f"{b.low:.2f}-{b.high:.2f} over {b.rows} rows")
    console.print("Target (issue 12), held-out part: median |error| <= 10%, >= 80% within "
                  "25%, 35-65% over-predicted. Rows: benchmarks/published_measurements.yaml")
    if args.write:
        _write(fitted)
        console.print(f"wrote {FITS}")


def _prior(catalog: Catalog, row: Measurement):
    engine = catalog.engine(row.engine_ref)
    return catalog.engines[engine.name]  # the entry as written, without an earlier fit


def _table(rows, before, after, catalog) -> Table:
    table = Table(title="tokenomy plan (estimated) vs published measurements "
                        "(ratio = measured / predicted speed)")
    for col in ("part", "model", "GPU", "scheme", "engine", "batch", "in/out", "metric",
                "measured", "ratio before", "ratio after"):
        table.add_column(col)
    for r in rows:
        style = None if abs(after[r.id] - 1) <= 0.25 else "red"
        table.add_row("held-out" if r.held_out else "fit", r.model,
                      f"{r.num_gpus}x {r.gpu}", r.scheme, _prior(catalog, r).name,
                      str(r.batch or "peak"), f"{r.input_tokens}/{r.output_tokens}",
                      r.metric, f"{r.value:,.4g}", f"{before[r.id]:.2f}",
                      f"{after[r.id]:.2f}", style=style)
    return table


def _write(fitted: dict) -> None:
    fits = [{"engine": name,
             "efficiency": {k: round(v, 4) for k, v in engine.efficiency.model_dump().items()},
             "band": engine.band.model_dump(), "fitted_on": engine.fitted_on}
            for name, engine in fitted.items()]
    header = ("# GENERATED by `python benchmarks/plan_calibration.py --write` on "
              f"{dt.date.today()}: engine factors fitted on the fitting part of\n"
              "# benchmarks/published_measurements.yaml (row ids in fitted_on), and the band\n"
              "# (10th-90th percentile of measured / predicted speed) every estimate shows.\n")
    FITS.write_text(header + yaml.safe_dump({"fits": fits}, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
