"""Pick the cheapest deployment for the workload and say why, from the numbers alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from tokenomy.catalog import Workload

if TYPE_CHECKING:
    from tokenomy.plan import PlanRow


class Recommendation(BaseModel):
    scheme: str
    gpu: str
    tp: int
    pp: int
    replicas: int
    gpus: int
    batch: int
    usd_per_month: float
    usd_per_m_output: float
    usd_per_m_input: float
    reasons: list[str]
    runners_up: list[str]


def _key(row: PlanRow) -> tuple[float, float]:
    return (row.cost.usd_per_month, row.cost.usd_per_m_tokens)


def recommend(rows: list[PlanRow], wl: Workload) -> Recommendation | None:
    """The feasible row with the lowest monthly cost for the stated traffic (ties: the
    lowest blended $/1M tokens), with reasons drawn from its numbers."""
    feasible = sorted((r for r in rows if r.feasible), key=_key)
    if not feasible:
        return None
    best = feasible[0]
    fit, point, money = best.serving, best.point, best.cost
    reasons = [
        f"lowest estimated cost for {wl.requests_per_s:g} req/s of '{wl.name}' "
        f"({wl.input_tokens} in / {wl.output_tokens} out): {money.gpus} x {best.gpu} "
        f"(TP={fit.tp}{f' PP={fit.pp}' if fit.pp > 1 else ''}"
        f"{f' x {money.replicas} replicas' if money.replicas > 1 else ''}), "
        f"${money.usd_per_month:,.0f}/month at {money.utilization:.0%} utilization",
        _regime(best),
        f"batch {point.batch} per replica, limited by {best.batch_limit}: "
        f"TPOT {point.tpot_ms:.1f} ms, TTFT {point.ttft_s:.2f} s, "
        f"{point.output_tokens_per_s / fit.num_gpus:,.0f} output tok/s per GPU",
    ]
    same_gpu = [r for r in feasible if r.gpu == best.gpu and r.scheme != best.scheme]
    for other in same_gpu[:2]:
        ratio = other.cost.usd_per_m_output / money.usd_per_m_output
        reasons.append(
            f"{other.scheme} on {other.gpu}: ${other.cost.usd_per_m_output:.3f}/1M output "
            f"tokens ({ratio:.2f}x), batch {other.point.batch} "
            f"({other.point.bound}-bound, limited by {other.batch_limit})"
        )
    flips = [r for r in feasible[1:] if best.ranges and r.ranges
             and r.ranges.usd_per_month[0] < best.ranges.usd_per_month[1]]
    if flips:
        reasons.append(
            "the ranking can flip inside the error bands: "
            + "; ".join(f"{r.scheme} on {r.gpu} may cost ${r.ranges.usd_per_month[0]:,.0f}-"
                        f"{r.ranges.usd_per_month[1]:,.0f}/month" for r in flips[:3])
            + f" against ${best.ranges.usd_per_month[0]:,.0f}-"
              f"{best.ranges.usd_per_month[1]:,.0f}: measure both (tokenomy bench)")
    if best.risk.level != "low":
        reasons.append(f"quality risk {best.risk.level} (estimate): {best.risk.reason}")
    runners = [
        f"{r.scheme} on {r.gpu}: ${r.cost.usd_per_month:,.0f}/month, "
        f"${r.cost.usd_per_m_output:.3f}/1M out"
        for r in feasible[1:4]
    ]
    return Recommendation(
        scheme=best.scheme, gpu=best.gpu, tp=fit.tp, pp=fit.pp, replicas=money.replicas,
        gpus=money.gpus, batch=point.batch, usd_per_month=money.usd_per_month,
        usd_per_m_output=money.usd_per_m_output, usd_per_m_input=money.usd_per_m_input,
        reasons=reasons, runners_up=runners,
    )


def _regime(row: PlanRow) -> str:
    p = row.point
    if p.bound == "memory":
        return (
            f"decode is memory-bound at batch {p.batch}: each token costs the bytes it reads, "
            f"so {row.scheme}'s {row.weights_gb:,.1f} GB of weights pay off"
        )
    return (
        f"decode is compute-bound at batch {p.batch}: the matmul dtype decides, and "
        f"{row.scheme} computes in {row.compute_dtype}"
    )
