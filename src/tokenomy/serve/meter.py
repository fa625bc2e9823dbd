"""What each request costs.

- API deployments: the list price per token from the config.
- Self-hosted deployments: the machine's $/hour amortized over its throughput, as
  machine-seconds per 1M prompt and per 1M completion tokens. Measured by `tokenomy
  bench` at several loads, the meter takes the run whose observed concurrency is nearest
  the deployment's current load (interpolating between runs). Without a bench result it
  falls back to the planner's estimate, and every row says which it used.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

from tokenomy.errors import TokenomyError
from tokenomy.serve.config import Deployment, GatewayConfig


@dataclass(frozen=True)
class Rate:
    usd_per_input_token: float
    usd_per_output_token: float
    basis: str  # how it was obtained: list price / measured (...) / estimated (...)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.usd_per_input_token + \
            completion_tokens * self.usd_per_output_token


@dataclass(frozen=True)
class _Curve:
    """Machine-seconds per 1M tokens against load, from bench runs (sorted by load)."""

    loads: list[float]
    s_per_m_input: list[float]
    s_per_m_output: list[float]
    source: str

    def at(self, load: float) -> tuple[float, float, float]:
        i = bisect.bisect_left(self.loads, load)
        if i == 0:
            return self.s_per_m_input[0], self.s_per_m_output[0], self.loads[0]
        if i >= len(self.loads):
            return self.s_per_m_input[-1], self.s_per_m_output[-1], self.loads[-1]
        lo, hi = self.loads[i - 1], self.loads[i]
        w = (load - lo) / (hi - lo)

        def mix(values):
            return values[i - 1] * (1 - w) + values[i] * w

        return mix(self.s_per_m_input), mix(self.s_per_m_output), load


def load_bench_curve(path: Path) -> _Curve:
    try:
        data = json.loads(Path(path).read_text())
        runs = sorted((r for r in data["runs"] if r.get("machine_s_per_1m_output")),
                      key=lambda r: r["concurrency_observed"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TokenomyError(f"model_info.bench {path} is not a `tokenomy bench --json` "
                            f"result ({exc.__class__.__name__}: {exc}); re-run tokenomy bench "
                            "or remove the field to use the planner's estimate") from None
    if not runs:
        raise TokenomyError(f"model_info.bench {path} has no successful runs to price from")
    if any(r.get("requests_cached") for r in data["runs"]):
        raise TokenomyError(f"model_info.bench {path} holds answers served from a response "
                            "cache, not measurements of the engine: re-run `tokenomy bench` "
                            "against the engine (or with the gateway's cache off)")
    return _Curve([r["concurrency_observed"] for r in runs],
                  [r["machine_s_per_1m_input"] for r in runs],
                  [r["machine_s_per_1m_output"] for r in runs],
                  source=f"measured by tokenomy bench ({Path(path).name}, "
                         f"{data.get('hardware', '?')})")


def planner_curve(deployment: Deployment) -> _Curve:
    """The planner's machine-seconds per 1M tokens for a self-hosted deployment."""
    info = deployment.model_info
    if info.hardware == "cpu":
        from tokenomy.plan.cpu import ENGINE_FACTORS, estimate_machine_seconds
        from tokenomy.serve.engines import gguf_of

        engine = deployment.params.engine
        gguf = gguf_of(deployment.params.model) if engine in ENGINE_FACTORS else None
        if gguf is None or gguf.suffix != ".gguf":
            raise TokenomyError(
                f"no throughput for {deployment.id!r}: the planner estimates CPU serving of "
                "a GGUF by llama.cpp or OpenVINO only; run `tokenomy bench` on it and set "
                "model_info.bench")
        factors = None
        if info.profile:
            from tokenomy.calibrate import load_profile

            factors = load_profile(info.profile).cpu_factors()
        points = estimate_machine_seconds(gguf, max_batch=deployment.params.parallel,
                                          factors=factors, engine=engine)
        how = f", {factors.calibrated}" if factors else ""
        return _Curve([p[0] for p in points], [p[1] for p in points], [p[2] for p in points],
                      source="estimated by the planner (roofline, this CPU's measured "
                             f"bandwidth and FLOPS{how})")
    from tokenomy.plan import plan

    model = info.plan_model or deployment.params.model
    result = plan(model, "chat", gpus=[info.hardware], schemes=[info.plan_scheme],
                  profile=info.profile)
    row = result.rows[0]
    if row.cost is None:
        raise TokenomyError(f"the planner finds no layout for {model} {info.plan_scheme} on "
                            f"{info.hardware}: set model_info.bench from a measurement")
    seconds_per_usd = 3600.0 / row.cost.usd_per_hour
    return _Curve([1.0], [row.cost.usd_per_m_input * seconds_per_usd],
                  [row.cost.usd_per_m_output * seconds_per_usd],
                  source=f"estimated by the planner ({model} {info.plan_scheme} on "
                         f"{info.hardware}, chat workload)")


class Meter:
    def __init__(self, config: GatewayConfig):
        self._info = {d.id: d.priced() for d in config.model_list}
        self._curves: dict[str, _Curve] = {}
        for d in config.model_list:
            info = self._info[d.id]
            if info.usd_per_hour is None:
                continue
            self._curves[d.id] = (load_bench_curve(info.bench) if info.bench
                                  else planner_curve(d))

    def rate(self, deployment_id: str, load: float = 1.0) -> Rate:
        info = self._info[deployment_id]
        if info.usd_per_hour is None:
            return Rate(info.input_cost_per_token or 0.0, info.output_cost_per_token or 0.0,
                        "list price")
        curve = self._curves[deployment_id]
        s_in, s_out, at = curve.at(max(load, 1.0))
        usd_per_s = info.usd_per_hour / 3600.0
        return Rate(usd_per_s * s_in / 1e6, usd_per_s * s_out / 1e6,
                    f"${info.usd_per_hour:g}/h over throughput {curve.source} at "
                    f"{at:.1f} concurrent")

    def sources(self) -> dict[str, str]:
        return {d: (c.source if d in self._curves else "list price")
                for d, c in ((d, self._curves.get(d)) for d in self._info)}
