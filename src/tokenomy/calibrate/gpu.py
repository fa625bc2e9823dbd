"""Fit an engine profile's efficiency factors to GPU measurements: published rows, or
`tokenomy bench` runs against a GPU deployment turned into the same rows (TPOT at the
observed concurrency)."""

from __future__ import annotations

from tokenomy.errors import InvalidInputError, TokenomyError

ENGINES = {"vllm": "vllm", "llama.cpp server": "llama.cpp", "openai-compatible": "vllm"}


def rows_from_benches(benches: list[dict]) -> list:
    from tokenomy.plan.fit import Measurement

    rows = []
    for bench in benches:
        config = bench.get("config") or {}
        model = config.get("plan_model") or config.get("model")
        if not model:
            raise InvalidInputError(f"{bench['path']}: a GPU bench needs --plan-model (the "
                                    "catalog model it served) to calibrate the planner")
        for run in bench["runs"]:
            tpot = (run.get("tpot_s") or {}).get("p50")
            if not tpot:
                continue
            ok = run["requests_ok"]
            rows.append(Measurement(
                model=model, gpu=bench["hardware"], scheme=config.get("plan_scheme", "bf16"),
                engine=ENGINES.get(bench.get("engine"), "vllm"),
                batch=max(1, round(run["concurrency_observed"])),
                input_tokens=max(1, round(run["input_tokens"] / ok)),
                output_tokens=max(1, round(run["output_tokens"] / ok)),
                metric="tpot_ms", value=tpot * 1e3, source=bench["path"]))
    if not rows:
        raise InvalidInputError("no bench run measured a time per output token to fit on")
    return rows


def fit_gpu(rows: list, name: str):
    from tokenomy.calibrate import Profile
    from tokenomy.catalog import default_catalog
    from tokenomy.plan.fit import fit_engine, predict

    catalog = default_catalog()
    engines = {catalog.engine(r.engine_ref).name for r in rows}
    gpus = {r.gpu for r in rows}
    if len(engines) > 1 or len(gpus) > 1:
        raise InvalidInputError(f"the rows mix engines {sorted(engines)} or GPUs "
                                f"{sorted(gpus)}: one profile is one engine on one GPU type")
    engine = catalog.engine(rows[0].engine_ref)
    for row in rows:  # an unknown GPU, model, scheme or engine: one clear line, nothing kept
        try:
            predict(row, engine, catalog)
        except TokenomyError as e:
            raise InvalidInputError(str(e)) from None
    factors = ("decode_bandwidth", "step_overhead_ms") if len(rows) < 4 else None
    result = fit_engine(rows, engine, catalog, **({"factors": factors} if factors else {}),
                        basis=f"measurements of {engine.name} on {rows[0].gpu}")
    fitted = result.engine
    return Profile(name=name, kind="gpu", engine=engine.name, hardware=rows[0].gpu,
                   model=", ".join(sorted({r.model for r in rows})),
                   factors=fitted.efficiency.model_dump(), band=fitted.band,
                   measurements=len(rows), fitted_on=fitted.fitted_on, inputs=[], created="")
