"""Fit the CPU roofline of one engine (llama.cpp or OpenVINO GenAI;
tokenomy.plan.cpu.CpuFactors) to bench results: each run's measured output tokens/s at its
observed concurrency against the roofline's."""

from __future__ import annotations

import math
from pathlib import Path

from tokenomy.errors import InvalidInputError
from tokenomy.plan.fit import band, descend

# log-space prior width: efficiencies and overheads may move far from the defaults on an
# unusual machine (x2 costs what one run 12% off does), but not without evidence
PRIOR_SIGMA = 2.0
FITTED = ("eff_flops", "eff_decode_flops", "layer_overhead_s", "sequence_overhead_s",
          "request_overhead_s")
SEQUENCE_OVERHEAD_PRIOR_S = 0.5e-3  # a start for the search (the default is 0)


def _points(benches: list[dict]):
    """(gguf, hardware, batch, mean input tokens, mean output tokens, measured out tok/s)."""
    from tokenomy.plan.cpu import CpuHardware

    points = []
    for bench in benches:
        estimate = bench.get("estimate") or {}
        gguf = estimate.get("gguf")
        if not gguf or "hardware" not in estimate:
            raise InvalidInputError(f"{bench['path']} has no CPU estimate to calibrate (the "
                                    "served GGUF was unknown): bench with --model or "
                                    "--plan-model PATH.gguf")
        if not Path(gguf).is_file():
            raise InvalidInputError(f"{bench['path']} measured {gguf}, which no longer exists")
        hardware = CpuHardware.model_validate(estimate["hardware"])
        serial = bool(bench.get("serial_engine"))
        for run in bench["runs"]:
            ok = run["requests_ok"]
            batch = 1 if serial else max(1, round(run["concurrency_observed"]))
            points.append((gguf, hardware, batch, run["input_tokens"] / ok,
                           run["output_tokens"] / ok, run["output_tokens_per_s"]))
    return points


def _engine(benches: list[dict]) -> str:
    """The CPU engine the results measured (one), as the CPU planner names it."""
    engines = {"openvino" if b.get("engine") == "openvino" else "llamacpp" for b in benches}
    if len(engines) > 1:
        raise InvalidInputError("these results measured different engines "
                                f"({', '.join(sorted(engines))}): calibrate one at a time")
    return engines.pop()


def fit_cpu(benches: list[dict], name: str):
    from tokenomy.calibrate import Profile
    from tokenomy.plan.cpu import CpuFactors, engine_factors, estimate

    points = _points(benches)
    engine = _engine(benches)
    prior = engine_factors(engine).model_dump(exclude={"calibrated", "engine"})
    start = {k: prior[k] for k in FITTED}
    start["sequence_overhead_s"] = start["sequence_overhead_s"] or SEQUENCE_OVERHEAD_PRIOR_S

    def predicted(values: dict[str, float]) -> list[float]:
        f = CpuFactors(**{**prior, **values}, engine=engine)
        return [estimate(g, n_in, n_out, batch=b, hardware=hw, factors=f).output_tokens_per_s
                for g, hw, b, n_in, n_out, _ in points]

    def loss(values: dict[str, float]) -> float:
        err = sum(math.log(m / p) ** 2
                  for p, (*_, m) in zip(predicted(values), points, strict=True))
        return err + sum((math.log(values[k] / start[k]) / PRIOR_SIGMA) ** 2 for k in values)

    values = descend(start, loss, caps={"eff_bandwidth": 1.0})  # the others are free
    ratios = [m / p for p, (*_, m) in zip(predicted(values), points, strict=True)]
    hardware = points[0][1]
    return Profile(name=name, kind="cpu", engine=engine, hardware=hardware.cpu,
                   model=Path(points[0][0]).name, factors={**prior, **values},
                   band=band(ratios, basis=f"bench runs on {hardware.cpu}"),
                   measurements=len(points),
                   fitted_on=[f"{Path(b['path']).name}" for b in benches], inputs=[],
                   created="")
