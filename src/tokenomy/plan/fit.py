"""Fitting the planner to measurements: an engine profile's efficiency factors by least
squares on log(predicted / measured), pulled towards the catalog's values (priors) so a
few rows cannot produce absurd factors, and the error band its estimates carry.

    minimize  sum_rows log(pred_i / meas_i)^2  +  sum_factors (log(f / f_prior) / SIGMA)^2

Rows are `Measurement`s: published figures (benchmarks/published_measurements.yaml) or
`tokenomy bench` results turned into the same shape. Each row has a stable id (a hash of
what it measured), and the published set is split once by that hash into a fitting part
and a held-out part that no factor is fitted on.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tokenomy.catalog import Catalog, Workload
from tokenomy.catalog.schema import Band, Engine
from tokenomy.errors import InvalidInputError, TokenomyError
from tokenomy.numbers import finite
from tokenomy.plan.cost import choose_batch, operating_point
from tokenomy.plan.memory import memory_fit, weight_bytes
from tokenomy.plan.perf import Hardware, prefill_time_s, step_time

FACTORS = ("decode_bandwidth", "compute", "step_overhead_ms", "layer_overhead_us",
           "sequence_overhead_us", "interconnect")
SIGMA = 1.0  # prior width in log space: x1.5 from the catalog value costs about
# what three rows 25% off do
HELD_OUT_PERCENT = 30
FEW, FEW_FLOOR = 5, 0.15
Metric = Literal["tpot_ms", "decode_tokens_per_s", "e2e_latency_s",
                 "static_batch_tokens_per_s", "max_output_tokens_per_s"]
_TIME_METRICS = ("tpot_ms", "e2e_latency_s")  # larger is slower


class Measurement(BaseModel):
    """One measured figure and everything the planner needs to predict it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str
    gpu: str
    num_gpus: finite(ge=1, le=100_000, integer=True) = 1
    scheme: str
    engine: str
    engine_version: str | None = None
    batch: finite(ge=1, le=1e6, integer=True) | None = None
    input_tokens: finite(ge=1, le=1e7, integer=True)
    output_tokens: finite(ge=1, le=1e7, integer=True)
    kv_cache: str | None = None
    metric: Metric
    value: finite(gt=0, le=1e12)
    source: str = ""

    @property
    def id(self) -> str:
        key = "|".join(str(x) for x in (self.model, self.gpu, self.num_gpus, self.scheme,
                                        self.engine, self.engine_version, self.batch,
                                        self.input_tokens, self.output_tokens, self.metric,
                                        self.value, self.source))
        return hashlib.sha256(key.encode()).hexdigest()[:10]

    @property
    def held_out(self) -> bool:
        return int(self.id, 16) % 100 < HELD_OUT_PERCENT

    @property
    def engine_ref(self) -> str:
        version = self.engine_version
        return f"{self.engine}@{version}" if version and version[:1].isdigit() else self.engine

    def speed_ratio(self, predicted: float) -> float:
        """measured / predicted as a speed (>1: faster than predicted)."""
        if self.metric in _TIME_METRICS:
            return predicted / self.value
        return self.value / predicted


def predict(row: Measurement, engine: Engine, catalog: Catalog) -> float:
    """The planner's figure for `row`'s conditions, with `engine`'s factors."""
    try:
        spec, scheme = catalog.model(row.model), catalog.scheme(row.scheme)
        gpu = catalog.gpu(row.gpu)
    except TokenomyError as e:
        raise InvalidInputError(f"measurement {row.id} ({row.model} on {row.gpu}): {e}") from None
    hw = Hardware(gpu, engine, tp=row.num_gpus)
    weights = weight_bytes(spec, scheme)
    n_in, n_out, batch = row.input_tokens, row.output_tokens, row.batch or 1
    wl = Workload(name="measured", description=row.source or "measurement", input_tokens=n_in,
                  output_tokens=n_out, mode="offline")
    kv_bits = 8 if row.kv_cache == "fp8" else 16
    if row.metric in ("tpot_ms", "decode_tokens_per_s"):
        point = operating_point(spec, scheme, weights, hw, wl, batch, kv_bits=kv_bits)
        return point.tpot_ms if row.metric == "tpot_ms" else 1e3 / point.tpot_ms
    if row.metric in ("e2e_latency_s", "static_batch_tokens_per_s"):
        # a static batch (vLLM's benchmark_latency, TensorRT-LLM's old tables): every
        # prompt prefilled together, then `n_out` decode steps with the context growing
        prefill = prefill_time_s(spec, scheme, weights, hw, n_in * batch, kv_bits=kv_bits)
        stride = max(1, n_out // 16)
        decode = sum(step_time(spec, scheme, weights, hw, decode_seqs=batch, context=n_in + i,
                               kv_bits=kv_bits).total_s
                     for i in range(0, n_out, stride)) * stride
        if row.metric == "e2e_latency_s":
            return prefill + decode
        return batch * n_out / (prefill + decode)
    fit = memory_fit(spec, scheme, gpu, engine, hw.tp, 1, wl.context, kv_bits)
    max_batch = min(fit.max_sequences, engine.max_num_seqs)
    point, _, _ = choose_batch(spec, scheme, weights, hw, wl, max_batch, kv_bits=kv_bits)
    if point is None:
        raise InvalidInputError(f"measurement {row.id}: {row.model} does not fit "
                                f"{row.num_gpus}x {row.gpu}")
    return point.output_tokens_per_s


def band(ratios: Sequence[float], basis: str = "published measurements") -> Band:
    """10th-90th percentile of measured / predicted speed, and the median |error|."""
    if not ratios:
        raise InvalidInputError("no measurements to derive an error band from")
    ordered = sorted(ratios)
    q = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 \
        else [ordered[0]] * 9
    low, high = min(q[0], 1.0), max(q[-1], 1.0)
    if len(ordered) < FEW:  # a percentile of a handful of rows says little: at least +-15%
        low, high = min(low, 1 - FEW_FLOOR), max(high, 1 + FEW_FLOOR)
        basis += f" (under {FEW} rows: at least +-{FEW_FLOOR:.0%})"
    return Band(low=low, high=high, rows=len(ordered),
                median_abs_error=statistics.median(abs(r - 1) for r in ordered), basis=basis)


class FitResult(BaseModel):
    engine: Engine
    ratios: dict[str, float]  # row id -> measured / predicted speed, after the fit
    before: dict[str, float]  # the same with the prior factors


def fit_engine(rows: Sequence[Measurement], engine: Engine, catalog: Catalog,
               factors: Sequence[str] = FACTORS, sweeps: int = 6,
               basis: str = "published measurements") -> FitResult:
    """`engine` with its factors fitted to `rows` (coordinate descent in log space)."""
    if not rows:
        raise InvalidInputError(f"no measurements to fit engine {engine.name!r} on")
    prior = engine.efficiency.model_dump()
    values = {f: prior[f] for f in factors if prior[f] > 0}

    def with_values(vals: dict[str, float]) -> Engine:
        eff = engine.efficiency.model_copy(update={f: min(v, 1.0) if f in ("decode_bandwidth",
                                                                           "compute") else v
                                                   for f, v in vals.items()})
        return engine.model_copy(update={"efficiency": eff})

    def loss(vals: dict[str, float]) -> float:
        eng = with_values(vals)
        fit_err = sum(math.log(r.speed_ratio(predict(r, eng, catalog))) ** 2 for r in rows)
        penalty = sum((math.log(v / prior[f]) / SIGMA) ** 2 for f, v in vals.items())
        return fit_err + penalty

    values = descend(values, loss, caps={"decode_bandwidth": 1.0, "compute": 1.0},
                     sweeps=sweeps)
    fitted = with_values(values)
    ratios = _ratios(rows, fitted, catalog)
    fitted = fitted.model_copy(update={"band": band(list(ratios.values()), basis),
                                       "fitted_on": [r.id for r in rows]})
    return FitResult(engine=fitted, ratios=ratios, before=_ratios(rows, engine, catalog))


def descend(values: dict[str, float], loss, caps: dict[str, float] | None = None,
            sweeps: int = 6) -> dict[str, float]:
    """Coordinate descent in log space: each factor is multiplied up or down by a step
    while the loss falls; the step halves each sweep (x1.65, x1.28, x1.13 ...). Factors
    stay positive and under their caps."""
    caps = caps or {}
    best = loss(values)
    for sweep in range(sweeps):
        step = 0.5 / (2 ** sweep)
        for f in values:
            for direction in (1, -1):
                while True:
                    trial = {**values, f: values[f] * math.exp(direction * step)}
                    if trial[f] > caps.get(f, math.inf):
                        break
                    trial_loss = loss(trial)
                    if trial_loss >= best:
                        break
                    values, best = trial, trial_loss
    return values


def _ratios(rows: Sequence[Measurement], engine: Engine, catalog: Catalog) -> dict[str, float]:
    return {r.id: r.speed_ratio(predict(r, engine, catalog)) for r in rows}


def summary(ratios: Sequence[float]) -> dict[str, float]:
    """The three figures the planner is held to: median |error|, share within 25%, and
    share over-predicted (measured slower than predicted)."""
    n = len(ratios)
    return {"rows": n,
            "median_abs_error": statistics.median(abs(r - 1) for r in ratios) if n else 0.0,
            "within_25": sum(abs(r - 1) <= 0.25 for r in ratios) / n if n else 0.0,
            "over_predicted": sum(r < 1 for r in ratios) / n if n else 0.0}


