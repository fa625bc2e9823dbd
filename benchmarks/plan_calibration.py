"""The planner's predictions against published measurements, with the ratios.

    python benchmarks/plan_calibration.py [--json]

Each row of published_measurements.yaml names a model, GPU (x count), scheme, engine,
batch and lengths, and one measured figure with its source. The planner predicts the
same figure from the catalog alone (no fitting per row); the ratio predicted/measured
is printed, and the summary counts the rows within 25%.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from tokenomy.catalog import Workload, default_catalog
from tokenomy.plan.cost import choose_batch, operating_point
from tokenomy.plan.memory import memory_fit, weight_bytes
from tokenomy.plan.perf import Hardware, prefill_time_s, step_time

HERE = Path(__file__).parent
TOLERANCE = 0.25


def predict(row: dict) -> float:
    cat = default_catalog()
    spec, scheme = cat.model(row["model"]), cat.scheme(row["scheme"])
    hw = Hardware(cat.gpu(row["gpu"]), cat.engine(row["engine"]), tp=row["num_gpus"])
    weights = weight_bytes(spec, scheme)
    n_in, n_out, batch = row["input_tokens"], row["output_tokens"], row["batch"]
    wl = Workload(name="measured", description=row["source"], input_tokens=n_in,
                  output_tokens=n_out, mode="offline")
    metric = row["metric"]
    kv_bits = 8 if row.get("kv_cache") == "fp8" else 16
    if metric in ("tpot_ms", "decode_tokens_per_s", "e2e_latency_s"):
        point = operating_point(spec, scheme, weights, hw, wl, batch, kv_bits=kv_bits)
        if metric == "tpot_ms":
            return point.tpot_ms
        if metric == "decode_tokens_per_s":
            return 1e3 / point.tpot_ms
        prefill = prefill_time_s(spec, scheme, weights, hw, n_in * batch, kv_bits=kv_bits)
        return prefill + n_out * point.tpot_ms / 1e3
    if metric == "static_batch_tokens_per_s":
        prefill = prefill_time_s(spec, scheme, weights, hw, n_in * batch, kv_bits=kv_bits)
        decode = sum(
            step_time(spec, scheme, weights, hw, decode_seqs=batch, context=n_in + i,
                      kv_bits=kv_bits).total_s
            for i in range(0, n_out, 8)
        ) * 8
        return batch * n_out / (prefill + decode)
    if metric == "max_output_tokens_per_s":
        fit = memory_fit(spec, scheme, hw.gpu, hw.engine, hw.tp, 1, wl.context, kv_bits)
        max_batch = min(fit.max_sequences, hw.engine.max_num_seqs)
        point, _, _ = choose_batch(spec, scheme, weights, hw, wl, max_batch, kv_bits=kv_bits)
        return point.output_tokens_per_s
    raise ValueError(f"unknown metric {metric!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = yaml.safe_load((HERE / "published_measurements.yaml").read_text())["measurements"]
    results = []
    for row in rows:
        predicted = predict(row)
        ratio = predicted / row["value"]
        results.append({**row, "predicted": predicted, "ratio": ratio,
                        "within": abs(ratio - 1) <= TOLERANCE})
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return
    table = Table(title="tokenomy plan (estimated) vs published measurements")
    for col in ("model", "GPU", "scheme", "engine", "batch", "in/out", "metric", "measured",
                "predicted", "ratio"):
        table.add_column(col)
    for r in results:
        style = None if r["within"] else "red"
        table.add_row(
            r["model"], f"{r['num_gpus']}x {r['gpu']}", r["scheme"], r["engine"],
            str(r["batch"] or "peak"), f"{r['input_tokens']}/{r['output_tokens']}",
            r["metric"], f"{r['value']:,.4g}", f"{r['predicted']:,.4g}", f"{r['ratio']:.2f}",
            style=style,
        )
    console = Console(width=160)
    console.print(table)
    decode = [r for r in results if r["num_gpus"] == 1 and r["metric"] in
              ("tpot_ms", "decode_tokens_per_s", "e2e_latency_s")]
    for label, subset in (("single-GPU decode rows", decode), ("all rows", results)):
        within = sum(r["within"] for r in subset)
        spread = statistics.median(abs(math.log(r["ratio"])) for r in subset)
        console.print(f"{label}: {within}/{len(subset)} within {TOLERANCE:.0%}; median "
                      f"|log ratio| {spread:.3f} (x{math.exp(spread):.2f})")
    console.print("Sources and conditions: benchmarks/published_measurements.yaml")


if __name__ == "__main__":
    main()
