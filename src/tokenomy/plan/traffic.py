"""Traffic economics: what a month of an hourly demand profile costs served four ways,
from one replica of a plan row (its capacity at the workload's SLO and its $/hour). All
figures are ESTIMATES; hours are the unit of time (demand within an hour is steady, with
Poisson arrivals where cold starts are counted).

    dedicated   R = ceil(peak / capacity) replicas all month: R x $/h x 730 h
    autoscaled  r_h = max(min_replicas, ceil(demand_h / capacity)) each hour (scaled at
                the hour boundary), + cold_start_s billed per replica started; requests
                above the warm replicas' capacity in an hour's first cold_start_s meet a
                cold start
    serverless  per-second GPU billing while containers run: each hour, n = floor(demand /
                capacity) containers busy all hour and one more serving the rest, up while
                its requests keep arriving within request_s + idle_timeout_s of each other:
                up 3600 x (n + 1 - e^-w) s, w = rest x (request_s + idle_timeout_s), and
                rest x 3600 x e^-w requests find it stopped (a start each); scaling out a
                running fleet at the hour starts containers as autoscaled does. Every start
                bills cold_start_s; never less than the work itself
    api         requests x (input tokens x $in + output tokens x $out) / 1M

A month is 730 hours (cost.HOURS_PER_MONTH): 730 / 24 days of a daily profile, 730 / 168
weeks of a weekly one. Utilization is work / billed capacity (replica-seconds).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from tokenomy.numbers import finite
from tokenomy.plan.cost import HOURS_PER_MONTH
from tokenomy.plan.traffic_profile import Profile, load_profile, traffic_catalog

if TYPE_CHECKING:
    from tokenomy.catalog import Workload
    from tokenomy.modelspec import ModelSpec

Option = Literal["dedicated", "autoscaled", "serverless", "api"]
OPTIONS: tuple[Option, ...] = ("dedicated", "autoscaled", "serverless", "api")  # tie order
LEVELS = tuple(10 ** (i / 40 - 1) for i in range(81))  # the sweep: 0.1x ... 10x, log-spaced
DEFAULT_LIFE_MONTHS = 12


class TrafficConfig(BaseModel):
    """What `plan(..., traffic=...)` prices; None fields take catalog/traffic.yaml's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = "diurnal"  # diurnal | bursty | flat | FILE.yaml | FILE.csv | ledger:URL
    min_replicas: finite(ge=0, le=10_000, integer=True) | None = None
    cold_start_s: finite(ge=0, le=3600) | None = None
    idle_timeout_s: finite(ge=0, le=86_400) | None = None
    serverless_usd_per_gpu_s: finite(gt=0, le=10) | None = None
    api_usd_per_m: tuple[finite(ge=0, le=10_000), finite(ge=0, le=10_000)] | None = None
    training_usd: finite(ge=0, le=1e12) | None = None
    life_months: finite(gt=0, le=600) | None = None


class Replica(BaseModel):
    """One replica of the plan row: what it serves at the SLO and what it costs."""

    model_config = ConfigDict(frozen=True)

    scheme: str
    gpu: str
    gpus: int  # per replica
    requests_per_s: float  # capacity at the chosen batch
    usd_per_hour: float  # the whole replica
    request_s: float  # one request, first token to last: TTFT + output x TPOT
    input_tokens: int
    output_tokens: int


class Settings(BaseModel):
    """The resolved knobs and prices, each price with where it comes from."""

    model_config = ConfigDict(frozen=True)

    min_replicas: int
    cold_start_s: float
    idle_timeout_s: float
    serverless_usd_per_gpu_s: float | None
    serverless_basis: str
    api_usd_per_m_input: float | None
    api_usd_per_m_output: float | None
    api_basis: str


class OptionCost(BaseModel):
    model_config = ConfigDict(frozen=True)

    option: Option
    usd_per_month: float | None  # None: no price for it (see assumptions)
    utilization: float | None  # work / billed replica-seconds; None for the API
    cold_start_share: float  # of requests
    detail: str  # replicas, replica-hours, billed seconds, tokens
    assumptions: str
    lifetime_usd: float | None = None  # training + life_months x usd_per_month
    training_share: float | None = None  # training / lifetime


class SweepPoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: float  # x the profile
    mean_requests_per_s: float
    usd_per_month: dict[Option, float | None]


class Crossover(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: float
    mean_requests_per_s: float
    below: Option  # cheapest just below this traffic
    above: Option  # cheapest from here
    usd_per_month: float


class TrafficEconomics(BaseModel):
    """Monthly cost of a demand profile served dedicated, autoscaled, serverless or by an
    API (estimated), the cheapest, how it changes with traffic, and lifetime cost."""

    profile: Profile
    replica: Replica
    settings: Settings
    options: list[OptionCost]
    cheapest: Option
    sweep: list[SweepPoint]
    crossovers: list[Crossover]
    training_usd: float | None = None
    life_months: float | None = None
    method: str


def dedicated(p: Profile, r: Replica) -> OptionCost:
    n = max(1, math.ceil(p.peak / r.requests_per_s))
    billed = n * 3600 * len(p.requests_per_s)
    return OptionCost(
        option="dedicated", usd_per_month=n * r.usd_per_hour * HOURS_PER_MONTH,
        utilization=_work_s(p, r) / billed, cold_start_share=0.0,
        detail=f"{n} replica(s) x {r.gpus} x {r.gpu}",
        assumptions=f"ceil(peak {p.peak:.3g} req/s / {r.requests_per_s:.3g} req/s per "
                    f"replica) = {n} replicas x ${r.usd_per_hour:.3g}/h x {HOURS_PER_MONTH} h")


def autoscaled(p: Profile, r: Replica, s: Settings) -> OptionCost:
    reps = [max(s.min_replicas, math.ceil(x / r.requests_per_s)) for x in p.requests_per_s]
    ups = [max(0, n - reps[h - 1]) for h, n in enumerate(reps)]  # hour 0 follows the last
    cold = min(s.cold_start_s, 3600)
    met = sum(max(0.0, x - reps[h - 1] * r.requests_per_s) * cold
              for h, x in enumerate(p.requests_per_s))
    billed = sum(reps) * 3600 + sum(ups) * s.cold_start_s
    return OptionCost(
        option="autoscaled", usd_per_month=billed / 3600 * r.usd_per_hour * _months(p),
        utilization=_work_s(p, r) / billed, cold_start_share=met / _requests(p),
        detail=f"{min(reps)}-{max(reps)} replicas, {sum(ups)} start(s) per "
               f"{_period(p)}",
        assumptions=f"max(min {s.min_replicas}, ceil(demand / {r.requests_per_s:.3g})) "
                    f"replicas each hour + {s.cold_start_s:g} s billed per replica started")


def serverless(p: Profile, r: Replica, s: Settings) -> OptionCost:
    if s.serverless_usd_per_gpu_s is None:
        return OptionCost(option="serverless", usd_per_month=None, utilization=None,
                          cold_start_share=0.0, detail="-", assumptions=s.serverless_basis)
    cap, cold = r.requests_per_s, min(s.cold_start_s, 3600)
    running = [math.ceil(x / cap) for x in p.requests_per_s]  # containers each hour
    billed = starts = met = 0.0
    for h, x in enumerate(p.requests_per_s):
        full = math.floor(x / cap)  # containers busy all hour
        rest = x - full * cap  # what the last container serves
        window = rest * (r.request_s + s.idle_timeout_s)  # its arrivals per busy + idle span
        billed += max(x * 3600 / cap, 3600 * (full - math.expm1(-window)))  # up 1 - e^-w
        idle = rest * 3600 * math.exp(-window)  # arrivals that find it stopped: a start each
        starts, met = starts + idle, met + idle
        before = running[h - 1]  # scaling out a running fleet (from zero: counted above)
        if before and running[h] > before:
            starts += running[h] - before
            met += max(0.0, x - before * cap) * cold
    billed += starts * s.cold_start_s
    usd = billed * r.gpus * s.serverless_usd_per_gpu_s * _months(p)
    return OptionCost(
        option="serverless", usd_per_month=usd, utilization=_work_s(p, r) / billed,
        cold_start_share=met / _requests(p),
        detail=f"{billed / 3600:,.1f} container-hours, {starts:,.0f} starts per {_period(p)}",
        assumptions=f"${s.serverless_usd_per_gpu_s:g}/GPU-s x {r.gpus} GPU(s) while a "
                    f"container runs: requests ({r.request_s:.3g} s) + {s.idle_timeout_s:g} s "
                    f"idle + {s.cold_start_s:g} s per container started ({s.serverless_basis})")


def api(p: Profile, r: Replica, s: Settings) -> OptionCost:
    if s.api_usd_per_m_input is None or s.api_usd_per_m_output is None:
        return OptionCost(option="api", usd_per_month=None, utilization=None,
                          cold_start_share=0.0, detail="-", assumptions=s.api_basis)
    per_request = (r.input_tokens * s.api_usd_per_m_input
                   + r.output_tokens * s.api_usd_per_m_output) / 1e6
    requests = _requests(p) * _months(p)
    return OptionCost(
        option="api", usd_per_month=requests * per_request, utilization=None,
        cold_start_share=0.0, detail=f"{requests * (r.input_tokens + r.output_tokens) / 1e9:,.2f}"
                                     "B tokens/month",
        assumptions=f"${s.api_usd_per_m_input:g} in / ${s.api_usd_per_m_output:g} out per "
                    f"1M tokens x {r.input_tokens} in + {r.output_tokens} out per request "
                    f"({s.api_basis})")


def price_options(p: Profile, r: Replica, s: Settings) -> list[OptionCost]:
    """The four options for profile `p`, in OPTIONS order."""
    return [dedicated(p, r), autoscaled(p, r, s), serverless(p, r, s), api(p, r, s)]


def cheapest(costs: list[OptionCost]) -> Option:
    """The lowest monthly cost; ties (to the cent) go to the simpler option, in OPTIONS order."""
    priced = [c for c in costs if c.usd_per_month is not None]
    return min(priced, key=lambda c: (round(c.usd_per_month, 2),
                                      OPTIONS.index(c.option))).option


def sweep(p: Profile, r: Replica, s: Settings) -> tuple[list[SweepPoint], list[Crossover]]:
    """Monthly cost of each option with the profile scaled 0.1x-10x, and the traffic
    levels where the cheapest option changes (refined by bisection on the log scale)."""
    def best(level: float) -> Option:
        return cheapest(price_options(p.scaled(level), r, s))

    points, winners = [], []
    for level in LEVELS:
        costs = price_options(p.scaled(level), r, s)
        points.append(SweepPoint(level=level, mean_requests_per_s=p.mean * level,
                                 usd_per_month={c.option: c.usd_per_month for c in costs}))
        winners.append(cheapest(costs))
    crossings = []
    for i in range(1, len(LEVELS)):
        if winners[i] == winners[i - 1]:
            continue
        lo, hi = LEVELS[i - 1], LEVELS[i]
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if best(mid) == winners[i - 1] else (lo, mid)
        costs = {c.option: c.usd_per_month for c in price_options(p.scaled(hi), r, s)}
        above = best(hi)
        crossings.append(Crossover(level=hi, mean_requests_per_s=p.mean * hi,
                                   below=winners[i - 1], above=above,
                                   usd_per_month=costs[above]))
    return points, crossings


def economics(p: Profile, r: Replica, s: Settings, training_usd: float | None = None,
              life_months: float | None = None) -> TrafficEconomics:
    """Everything `plan --traffic` reports, for one replica and one profile."""
    costs = price_options(p, r, s)
    if training_usd is not None:
        life_months = life_months or DEFAULT_LIFE_MONTHS
        costs = [_lifetime(c, training_usd, life_months) for c in costs]
    points, crossings = sweep(p, r, s)
    return TrafficEconomics(
        profile=p, replica=r, settings=s, options=costs, cheapest=cheapest(costs),
        sweep=points, crossovers=crossings, training_usd=training_usd,
        life_months=life_months if training_usd is not None else None,
        method=f"estimated, not measured: {r.scheme} on {r.gpus} x {r.gpu} per replica "
               f"serving {r.requests_per_s:.3g} req/s at the workload's SLO (the plan's "
               f"roofline); demand per hour from {p.source}; a month is {HOURS_PER_MONTH} h")


def _lifetime(c: OptionCost, training_usd: float, months: float) -> OptionCost:
    if c.usd_per_month is None:
        return c
    total = training_usd + months * c.usd_per_month
    return c.model_copy(update={"lifetime_usd": total,
                                "training_share": training_usd / total if total else 0.0})


def for_plan(row, workload: Workload, spec: ModelSpec,
             config: TrafficConfig) -> TrafficEconomics | None:
    """The economics of `row` (a feasible PlanRow, usually the recommendation) for the
    config's profile; None when there is no row to price."""
    profile = load_profile(config.profile, workload.requests_per_s)
    if row is None or row.point is None or row.cost is None or row.serving is None:
        return None
    point = row.point
    replica = Replica(
        scheme=row.scheme, gpu=row.gpu, gpus=row.serving.num_gpus,
        requests_per_s=point.output_tokens_per_s / workload.output_tokens,
        usd_per_hour=row.cost.usd_per_hour,
        request_s=point.ttft_s + workload.output_tokens * point.tpot_ms / 1e3,
        input_tokens=workload.input_tokens, output_tokens=workload.output_tokens)
    return economics(profile, replica, settings(config, row.gpu, spec),
                     config.training_usd, config.life_months)


def settings(config: TrafficConfig, gpu: str, spec: ModelSpec) -> Settings:
    """The config's knobs, else catalog/traffic.yaml's defaults and prices."""
    cat = traffic_catalog()
    d = cat.defaults
    if config.serverless_usd_per_gpu_s is not None:
        sl, sl_basis = config.serverless_usd_per_gpu_s, "--serverless-price"
    elif (entry := cat.serverless_price(gpu)) is not None:
        sl, sl_basis = entry.usd_per_gpu_s, f"{entry.provider}, {entry.source}, {entry.as_of}"
    else:
        sl, sl_basis = None, (f"no serverless price for {gpu} in the catalog: give "
                              "--serverless-price USD_PER_GPU_S")
    if config.api_usd_per_m is not None:
        (api_in, api_out), api_basis = config.api_usd_per_m, "--api-price"
    elif (price := cat.api_price(spec.name, spec.total_params, spec.moe is not None)):
        api_in, api_out = price.usd_per_m_input, price.usd_per_m_output
        api_basis = f"{price.provider} list price, {price.source}, {price.as_of}"
    else:
        api_in = api_out = None
        api_basis = f"no API price for {spec.name} in the catalog: give --api-price IN:OUT"
    return Settings(
        min_replicas=d.min_replicas if config.min_replicas is None else config.min_replicas,
        cold_start_s=d.cold_start_s if config.cold_start_s is None else config.cold_start_s,
        idle_timeout_s=(d.idle_timeout_s if config.idle_timeout_s is None
                        else config.idle_timeout_s),
        serverless_usd_per_gpu_s=sl, serverless_basis=sl_basis,
        api_usd_per_m_input=api_in, api_usd_per_m_output=api_out, api_basis=api_basis)


def _work_s(p: Profile, r: Replica) -> float:
    """Replica-seconds of work per profile period at full batch."""
    return _requests(p) / r.requests_per_s


def _requests(p: Profile) -> float:
    return sum(p.requests_per_s) * 3600


def _months(p: Profile) -> float:
    """Profile periods per month: 730 / 24 days, or 730 / 168 weeks."""
    return HOURS_PER_MONTH / len(p.requests_per_s)


def _period(p: Profile) -> str:
    return "day" if len(p.requests_per_s) == 24 else "week"


__all__ = ["OPTIONS", "Crossover", "OptionCost", "Replica", "Settings", "SweepPoint",
           "TrafficConfig", "TrafficEconomics", "economics", "for_plan", "price_options"]
