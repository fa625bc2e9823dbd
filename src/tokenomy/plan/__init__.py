"""`tokenomy.plan`: memory, GPUs, speed and $ per 1M tokens for a model, per precision
scheme and GPU type, for a workload. Every figure here is an ESTIMATE from an analytic
model (see memory.py, perf.py, cost.py); `tokenomy bench` measures."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tokenomy.catalog import Catalog, Workload, default_catalog
from tokenomy.catalog.schema import Band
from tokenomy.errors import InvalidInputError
from tokenomy.modelspec import ModelSpec
from tokenomy.numbers import Range
from tokenomy.plan.cost import Cost, OperatingPoint, Ranges, choose_batch, cost, ranges
from tokenomy.plan.levers import Lever, LeverEffect, Levers, resolve_levers
from tokenomy.plan.memory import (
    MemoryFit,
    layouts,
    memory_fit,
    min_gpus_for_weights,
    smallest_deployment,
    weight_bytes,
)
from tokenomy.plan.perf import Hardware
from tokenomy.plan.recommend import Recommendation, recommend
from tokenomy.plan.risk import PrecisionRisk, precision_risk
from tokenomy.plan.traffic import TrafficConfig, TrafficEconomics, for_plan
from tokenomy.plan.workload import resolve_model, resolve_workload

__all__ = ["DEFAULT_SCHEMES", "PlanResult", "PlanRow", "TrafficConfig", "plan"]

DEFAULT_SCHEMES = ("bf16", "fp8", "w8a8-int8", "w8a16", "w4a16", "nvfp4")
KvCache = Literal["auto", "fp8"]
SERVING_LAYOUT_FACTOR = 4


class ModelSummary(BaseModel):
    name: str
    origin: str
    total_params: float
    active_params: float
    training_tokens: float | None
    tokens_per_param: float | None
    max_context: int


class PlanRow(BaseModel):
    """One scheme on one GPU type: memory, deployment, speed and cost (all estimated)."""

    model_config = ConfigDict(frozen=True)

    scheme: str
    gpu: str
    engine: str
    compute_dtype: str
    weights_gb: float  # whole model, 1e9 bytes
    min_gpus_for_weights: int
    deployment: MemoryFit | None  # the smallest layout that holds it
    serving: MemoryFit | None  # the cheapest layout for the traffic (<= 4x as many GPUs)
    layout_notes: list[str]
    point: OperatingPoint | None
    batch_limit: str
    cost: Cost | None
    ranges: Ranges | None = None  # how far off each estimate may be (engine profile band)
    risk: PrecisionRisk
    usd_per_gpu_hour: float
    levers: LeverEffect | None = None  # without vs with --spec-decode / --prefix-cache-hit

    @property
    def feasible(self) -> bool:
        return self.serving is not None and self.point is not None


class PlanResult(BaseModel):
    """What `tokenomy plan` computed; round-trips to JSON."""

    model: ModelSummary
    workload: Workload
    kv_cache: KvCache
    rows: list[PlanRow]
    recommendation: Recommendation | None
    method: str  # how every figure was estimated, naming the engine profiles used
    levers: Levers | None = None  # speculative decoding / prefix caching, when applied
    traffic: TrafficEconomics | None = None  # the recommendation under a demand profile


def plan(
    model: str | Path | ModelSpec | None = None,
    workload: str | Path | Workload = "chat",
    gpus: list[str] | None = None,
    schemes: list[str] | None = None,
    *,
    rate: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    kv_cache: KvCache = "auto",
    prices: dict[str, float] | None = None,
    catalog: Catalog | None = None,
    engine: str | None = None,
    profile: str | None = None,
    spec_decode: str | None = None,
    acceptance: float | None = None,
    spec_tokens: int | None = None,
    prefix_cache_hit: float | None = None,
    traffic: TrafficConfig | None = None,
) -> PlanResult:
    """Plan serving `model` for `workload` on each GPU type x precision scheme.

    `engine`: the engine profile for every row (`vllm`, `vllm@0.6.3`, `tensorrt-llm`),
    instead of each scheme's default. `profile`: a `tokenomy calibrate` profile whose
    fitted factors and band replace its engine's.

    `model`: catalog name, HF model directory / config.json, GGUF file, or None for the
    embedded SmolLM2-135M. `prices`: USD per GPU-hour overrides by GPU name.

    `spec_decode` (`ngram` or `draft:MODEL`, with `acceptance` in (0, 1) and `spec_tokens`
    k, default 4) and `prefix_cache_hit` in [0, 1): levers priced into every row, each
    row keeping the plan without them in `row.levers` (see plan/levers.py).

    `traffic`: price the recommended row under an hourly demand profile, dedicated,
    autoscaled, serverless and by API, with the crossovers (see plan/traffic.py).
    """
    catalog = catalog or default_catalog()
    spec = resolve_model(model, catalog)
    wl = resolve_workload(workload, catalog, rate=rate, input_tokens=input_tokens,
                          output_tokens=output_tokens)
    if wl.context > spec.max_context:
        raise InvalidInputError(
            f"workload context {wl.input_tokens} + {wl.output_tokens} = {wl.context} tokens "
            f"exceeds {spec.name}'s maximum context of {spec.max_context}; shorten "
            "--input-tokens/--output-tokens."
        )
    if kv_cache not in ("auto", "fp8"):
        raise InvalidInputError(f"kv_cache must be 'auto' or 'fp8', got {kv_cache!r}.")
    lever = resolve_levers(spec, catalog, spec_decode=spec_decode, acceptance=acceptance,
                           spec_tokens=spec_tokens, prefix_cache_hit=prefix_cache_hit)
    calibrated = gpu_profile(profile)
    gpu_list = [catalog.gpu(g) for g in (gpus or list(catalog.gpus))]
    scheme_list = [catalog.scheme(s) for s in (schemes or DEFAULT_SCHEMES)]
    price = _prices(prices or {}, catalog)
    rows = [
        _row(spec, s, g, wl, kv_cache, price.get(g.name, g.price.usd_per_hour), catalog,
             engine_for(s, g, catalog, engine, calibrated), lever)
        for s in scheme_list
        for g in gpu_list
    ]
    rec = recommend(rows, wl)
    return PlanResult(
        model=ModelSummary(
            name=spec.name,
            origin=spec.origin,
            total_params=spec.total_params,
            active_params=spec.active_params,
            training_tokens=spec.training_tokens,
            tokens_per_param=spec.tokens_per_param,
            max_context=spec.max_context,
        ),
        workload=wl,
        kv_cache=kv_cache,
        rows=rows,
        recommendation=rec,
        method=_method(rows),
        levers=lever.settings if lever else None,
        traffic=_traffic(traffic, rows, rec, wl, spec),
    )


def _traffic(config: TrafficConfig | None, rows: list[PlanRow], rec, wl: Workload,
             spec: ModelSpec) -> TrafficEconomics | None:
    if config is None:
        return None
    row = next((r for r in rows if rec and (r.scheme, r.gpu) == (rec.scheme, rec.gpu)), None)
    return for_plan(row, wl, spec, config)


ROOFLINE = ("estimated, not measured: analytic roofline (weights + KV bytes vs bandwidth, "
            "FLOPs vs peak) scaled by engine efficiency factors")


def _method(rows: list[PlanRow]) -> str:
    """How the rows were estimated: the roofline and each engine profile's basis."""
    profiles = sorted({r.ranges.basis for r in rows if r.ranges is not None})
    if not profiles:
        return f"{ROOFLINE}; no row fits, so no engine profile was applied"
    return f"{ROOFLINE}; " + "; ".join(profiles)


# An engine profile fitted on no measurement: its estimates may be off by half either way.
DEFAULT_BAND = Band(low=0.5, high=1.5, rows=1, median_abs_error=0.5,
                    basis="no measurement of this engine: a default x0.5-x1.5")


def _basis(engine, band: Band) -> str:
    if band is DEFAULT_BAND:
        return f"{engine.name}: {band.basis}"
    return (f"{engine.name}: 10th-90th percentile of measured/predicted over {band.rows} "
            f"rows, {band.basis} (median error {band.median_abs_error:.0%})")


PRICE = Range(gt=0, le=10_000)  # USD per GPU-hour, as the catalog's


def _prices(prices: dict[str, float], catalog: Catalog) -> dict[str, float]:
    out = {}
    for name, usd in prices.items():
        out[catalog.gpu(name).name] = PRICE.check(usd, f"price for {name} ($/GPU-hour)")
    return out


def gpu_profile(name: str | None):
    if name is None:
        return None
    from tokenomy.calibrate import load_profile

    found = load_profile(name)
    if found.kind != "gpu":
        raise InvalidInputError(f"profile {name!r} calibrates this CPU ({found.hardware}); "
                                "plan prices GPUs: use it with `tokenomy bench --profile`")
    return found


def engine_for(scheme, gpu, catalog: Catalog, override: str | None, calibrated):
    """The engine profile a row is estimated with: the override or the scheme's engine,
    with a calibrated profile's factors and band where it measured that engine on that
    GPU type."""
    engine = catalog.engine(override or scheme.engine)
    if calibrated is not None and calibrated.engine == engine.name \
            and calibrated.hardware == gpu.name:
        efficiency = engine.efficiency.model_copy(update=calibrated.factors)
        band = calibrated.band.model_copy(update={"basis": calibrated.label})
        engine = engine.model_copy(update={"efficiency": efficiency, "band": band})
    return engine


def _row(spec: ModelSpec, scheme, gpu, wl: Workload, kv_cache: KvCache, usd: float,
         catalog: Catalog, engine, lever: Lever | None = None) -> PlanRow:
    kv_bits = 8 if kv_cache == "fp8" else 16
    weights = weight_bytes(spec, scheme)
    smallest, notes = smallest_deployment(spec, scheme, gpu, engine, wl.context, kv_bits)
    best, limit = _serve(spec, scheme, gpu, wl, kv_bits, usd, engine, weights, smallest)
    effect = None
    if lever is not None:  # the same search with the levers; the plain one for comparison
        without, without_limit = best, limit
        smallest = lever.deployment(spec, scheme, Hardware(gpu, engine), wl.context, kv_bits,
                                    smallest)
        best, limit = _serve(spec, scheme, gpu, wl, kv_bits, usd, engine, weights, smallest,
                             lever)
        effect = lever.effect(spec, scheme, weights, wl, kv_bits, Hardware(gpu, engine),
                              best[0] if best else smallest, best[1] if best else None,
                              without, without_limit)
    serving, point, money = (best[0], best[1], best[2]) if best else (None, None, None)
    band = engine.band or DEFAULT_BAND
    spread = ranges(point, money, band.low, band.high, _basis(engine, band)) if best else None
    return PlanRow(
        scheme=scheme.name,
        gpu=gpu.name,
        engine=engine.name,
        compute_dtype=Hardware(gpu, engine).compute_dtype(scheme),
        weights_gb=weights.total / 1e9,
        min_gpus_for_weights=min_gpus_for_weights(spec, scheme, gpu),
        deployment=smallest,
        serving=serving,
        layout_notes=notes,
        point=point,
        batch_limit=best[3] if best else limit,
        cost=money,
        ranges=spread,
        risk=precision_risk(spec, scheme),
        usd_per_gpu_hour=usd,
        levers=effect,
    )


def _serve(spec: ModelSpec, scheme, gpu, wl: Workload, kv_bits: int, usd: float, engine,
           weights, smallest: MemoryFit | None, lever: Lever | None = None):
    """The serving layout, batch and cost: ((fit, point, cost, why) or None, why not)."""
    best: tuple | None = None
    limit = lever.no_fit if lever is not None else "does not fit"
    if smallest is None:
        return best, limit
    # The smallest layout is not always the cheapest: one more doubling of TP can buy the
    # KV room for a much larger batch. Serve on the layout with the lowest monthly cost
    # for the stated traffic (ties: lowest $/1M tokens).
    for tp, pp in layouts(spec, scheme, gpu):
        if tp * pp < smallest.num_gpus or (lever and not lever.allows(tp, pp)):
            continue
        if tp * pp > SERVING_LAYOUT_FACTOR * smallest.num_gpus:
            break
        fit = memory_fit(spec, scheme, gpu, engine, tp, pp, wl.context, kv_bits)
        hw = Hardware(gpu, engine, tp, pp)
        if lever is not None:
            fit = lever.memory(fit, scheme, hw, kv_bits)
        max_batch = min(fit.max_sequences, engine.max_num_seqs)
        if max_batch < 1:
            continue
        if lever is None:
            point, _, why = choose_batch(spec, scheme, weights, hw, wl, max_batch, kv_bits)
        else:
            point, why = lever.choose_batch(spec, scheme, weights, hw, wl, max_batch, kv_bits)
        if point is None:
            limit = why
            continue
        money = cost(point, fit.num_gpus, usd, wl)
        key = (money.usd_per_month, money.usd_per_m_tokens)
        if best is None or key < (best[2].usd_per_month, best[2].usd_per_m_tokens):
            best = (fit, point, money, why)
    return best, limit
