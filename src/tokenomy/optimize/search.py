"""Options (scheme x target), the Pareto frontier over ($/1M output tokens, quality loss),
and the cheapest option inside the quality budget, with the reasons.

An estimated option carries, beside each $ figure, the interval it may fall in: on a GPU
the planner's band from the residuals of the measurements its engine profile was fitted
on (`tokenomy.plan.cost.Ranges`); on this CPU at an offline workload, the band of the CPU
planner's batching gain. A measured option (CPU, one stream) carries no band."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tokenomy.catalog import Catalog, Workload
from tokenomy.compress import get_scheme
from tokenomy.modelspec import ModelSpec
from tokenomy.optimize.cpu_speed import CpuSpeed, cost_per_m
from tokenomy.optimize.measure import Record
from tokenomy.plan import plan
from tokenomy.plan.risk import precision_risk

BASE = "base"


class Budget(BaseModel):
    """The quality loss a user accepts, measured against the base model."""

    max_kld: float = 0.05  # mean KL divergence (nats/token)
    max_kld_p99: float | None = None  # 99th percentile of KLD per token (the worst tokens)
    max_ppl_increase_pct: float = 5.0
    min_answer_agreement: float = 0.0  # share of greedy answers identical to the base's
    max_extra_looping: float = 0.1  # share of answers looping beyond the base's share

    def broken(self, o: Option) -> list[str]:
        """Which budget lines the option breaks ([] = inside the budget)."""
        if o.kld is None:
            return [] if o.risk_level == "low" else [f"unmeasured, precision risk {o.risk_level}"]
        lines = []
        if o.kld > self.max_kld:
            lines.append(f"KLD {o.kld:.3f} > {self.max_kld:g}")
        if self.max_kld_p99 is not None and o.kld_p99 is not None \
                and o.kld_p99 > self.max_kld_p99:
            lines.append(f"KLD p99 {o.kld_p99:.3f} > {self.max_kld_p99:g}")
        if o.ppl_change_pct > self.max_ppl_increase_pct:
            lines.append(f"perplexity +{o.ppl_change_pct:.1f}% > +{self.max_ppl_increase_pct:g}%")
        if o.answer_agreement < self.min_answer_agreement:
            lines.append(f"answer agreement {o.answer_agreement:.0%} < "
                         f"{self.min_answer_agreement:.0%}")
        if o.looping_excess > self.max_extra_looping and o.looping_excess_answers >= 2:
            lines.append(f"{o.looping_excess:.0%} more answers loop than the base's")
        return lines


class Option(BaseModel):
    scheme: str  # a student's options: '<student>/<scheme>', its unquantized self '<student>'
    model: str = ""  # the student it runs ('' = the model optimized)
    target: str  # GPU type, or 'cpu <engine>: <CPU model> x<threads>'
    workload: str
    kind: str  # gpu | cpu
    kld: float | None  # None: quality not measured (estimate only)
    kld_p99: float | None = None  # the reference's own is 0; None: not measured
    ppl_change_pct: float = 0.0
    answer_agreement: float = 1.0
    looping_excess: float = 0.0  # share of answers looping, minus the base's share
    looping_excess_answers: int = 0
    verdict: str = ""
    risk_level: str = "low"
    usd_per_m_output: float
    usd_per_m_input: float
    usd_per_month: float | None = None
    layout: str = ""
    weights_gb: float = 0.0
    quality_measured: bool
    cost_measured: bool  # True: measured speed (CPU); False: the planner's estimate (GPU)
    # (low, high) each estimated $ figure may fall in; None: measured, or results written
    # before bands existed
    usd_per_m_output_range: tuple[float, float] | None = None
    usd_per_m_input_range: tuple[float, float] | None = None
    usd_per_month_range: tuple[float, float] | None = None
    cost_basis: str = ""  # what the band rests on, or how the cost was measured

    def interval(self, field: str = "usd_per_m_output") -> tuple[float, float]:
        """The band of a $ figure; a measured figure (or one without a band) is its point."""
        point = getattr(self, field)
        return getattr(self, f"{field}_range") or (point, point)

    def figure(self, field: str = "usd_per_m_output", fmt: str = ".4f") -> str:
        """'0.4300 (0.3800-0.5200)' for an estimate, '0.4300 (measured)' for a measurement."""
        point, band = getattr(self, field), getattr(self, f"{field}_range")
        if point is None:
            return "-"
        if self.cost_measured:
            return f"{point:{fmt}} (measured)"
        if band is None:
            return f"{point:{fmt}} (estimated, no band)"
        return f"{point:{fmt}} ({band[0]:{fmt}}-{band[1]:{fmt}})"


class Selection(BaseModel):
    workload: str
    chosen: Option | None
    reasons: list[str]


def options_for(spec: ModelSpec, records: list[Record], wl: Workload, gpus: list[str],
                catalog: Catalog, prices: dict[str, float], cpu_usd_per_hour: float,
                base_gguf: Path | None, base_cpu: list[CpuSpeed | None] = (),
                base: Record | None = None) -> list[Option]:
    """`base`: the model's own measurement where it is not the reference (a student
    measured against its teacher); without one the base is the reference, KLD 0."""
    out: list[Option] = []
    quality = {BASE: dict(kld=0.0, kld_p99=0.0, verdict="reference")} if base is None else {}
    for r in records if base is None else [*records, base]:
        if r.quality is not None:
            quality[r.scheme] = measured_quality(r)
    for r in records:  # not measurable here: the precision-risk estimate stands in
        if r.quality is None and r.estimate_only:
            risk = precision_risk(spec, catalog.scheme(get_scheme(r.scheme).plan_scheme))
            quality[r.scheme] = dict(kld=None, verdict=f"not measured ({r.error}); precision "
                                     f"risk {risk.level} (estimate): {risk.reason}")
    # GPUs: compressed-tensors schemes (and the 16-bit base) through the planner
    gpu_schemes = {BASE: "bf16"} if BASE in quality else {}
    gpu_schemes |= {r.scheme: get_scheme(r.scheme).plan_scheme for r in records
                    if r.scheme in quality and get_scheme(r.scheme).backend in
                    ("llmcompressor", "auto-llmcompressor")}
    for name, plan_scheme in gpu_schemes.items():
        result = plan(spec, wl, gpus, [plan_scheme], prices=prices, catalog=catalog)
        for row in result.rows:
            if not row.feasible:
                continue
            s, g = row.serving, row.ranges
            out.append(Option(
                scheme=name, target=row.gpu, workload=wl.name, kind="gpu",
                risk_level=precision_risk(spec, catalog.scheme(plan_scheme)).level,
                usd_per_m_output=row.cost.usd_per_m_output,
                usd_per_m_input=row.cost.usd_per_m_input,
                usd_per_month=row.cost.usd_per_month,
                usd_per_m_output_range=g.usd_per_m_output if g else None,
                usd_per_m_input_range=g.usd_per_m_input if g else None,
                usd_per_month_range=g.usd_per_month if g else None,
                cost_basis=g.basis if g else "",
                layout=f"TP={s.tp}" + (f" PP={s.pp}" if s.pp > 1 else "") +
                f", batch {row.point.batch}",
                weights_gb=row.weights_gb, quality_measured=quality[name]["kld"] is not None,
                cost_measured=False, **quality[name],
            ))
    # this CPU: GGUF schemes (and a GGUF base), each engine's speed measured here
    cpu_rows = [(r.scheme, speed, _gguf(r.artifact), r.size_on_disk_bytes) for r in records
                for speed in (r.cpu_speed, r.openvino_speed) if speed]
    if base_gguf is not None:
        cpu_rows += [(BASE, speed, base_gguf, None) for speed in base_cpu if speed]
    out += [cpu_option(name, speed, gguf, size, wl, cpu_usd_per_hour, quality[name])
            for name, speed, gguf, size in cpu_rows if name in quality]
    return out


def measured_quality(r: Record) -> dict:
    """The Option fields of a record's measured quality."""
    q = r.quality
    return dict(
        kld=q.kld_mean, kld_p99=q.kld_p99, ppl_change_pct=q.perplexity_change_pct,
        answer_agreement=q.answer_agreement, verdict=q.verdict,
        looping_excess=(q.candidate.degenerate_answers - q.base.degenerate_answers)
        / max(q.answers, 1),
        looping_excess_answers=q.candidate.degenerate_answers - q.base.degenerate_answers,
    )


# Offline work keeps the engine's slots full: CPU options of an offline workload are
# priced at this many streams (the gateway's `params.parallel` for a batch deployment).
CPU_STREAMS = 16
# How far the CPU planner's batching gain may be off: its target, met on this machine's
# engines (benchmarks/cpu_engines.py prints the measured error).
BATCHING_BAND = (0.75, 1.25)


def _gguf(artifact: str | None) -> Path | None:
    found = sorted(Path(artifact).glob("*.gguf")) if artifact else []
    return found[0] if found else None


def cpu_option(name: str, speed: CpuSpeed, gguf: Path | None, size: int | None,
               wl: Workload, usd_per_hour: float, quality: dict) -> Option:
    """A GGUF on this CPU through one engine. Online: one stream, as measured (latency
    targets rule out a full batch on a CPU). Offline: the measured one-stream speed times
    the CPU planner's batching gain at CPU_STREAMS streams, an estimate with a band."""
    per_in, per_out = cost_per_m(speed, usd_per_hour, wl.input_tokens, wl.output_tokens)
    where = f"{speed.engine_label} on {speed.cpu} x{speed.threads}" + (
        "" if speed.load_per_core is None else
        f" (load {speed.load_per_core:g}/core before it started)")
    common = dict(scheme=name, target=f"cpu {speed.engine}: {speed.cpu} x{speed.threads}",
                  workload=wl.name, kind="cpu", usd_per_m_input=per_in,
                  weights_gb=(size or 0) / 1e9, quality_measured=True, **quality)
    if wl.mode != "offline" or gguf is None:
        return Option(**common, usd_per_m_output=per_out, cost_measured=True,
                      layout=f"{speed.engine_label}, 1 stream, "
                             f"{speed.decode_tokens_per_s:.0f} tok/s decode",
                      cost_basis=f"measured with {where} at ${usd_per_hour:g}/hour")
    from tokenomy.plan.cpu import batching_gain

    gain = batching_gain(gguf, wl.input_tokens, wl.output_tokens, CPU_STREAMS, speed.engine)
    point = per_out / gain
    return Option(**common, usd_per_m_output=point, cost_measured=False,
                  usd_per_m_output_range=(point / BATCHING_BAND[1], point / BATCHING_BAND[0]),
                  layout=f"{speed.engine_label}, {CPU_STREAMS} streams: "
                         f"{speed.decode_tokens_per_s:.0f} tok/s measured at 1 x{gain:.1f} "
                         "batching (estimated)",
                  cost_basis=f"one stream measured with {where} at ${usd_per_hour:g}/hour; "
                             f"the x{gain:.2f} gain of {CPU_STREAMS} streams estimated by "
                             f"the CPU planner ({speed.engine}), band "
                             f"x{BATCHING_BAND[0]:g}-x{BATCHING_BAND[1]:g}")


def pareto(options: list[Option]) -> list[Option]:
    """Options no other option beats on both cost and quality loss (measured KLD)."""
    measured = [o for o in options if o.kld is not None]
    frontier = []
    for o in sorted(measured, key=lambda o: (o.usd_per_m_output, o.kld)):
        if not frontier or o.kld < frontier[-1].kld:
            frontier.append(o)
    return frontier


def select(options: list[Option], budget: Budget, workload: str) -> Selection:
    mine = sorted((o for o in options if o.workload == workload),
                  key=lambda o: o.usd_per_m_output)
    cheaper = []
    for o in mine:
        broken = budget.broken(o)
        if not broken:
            flip = flip_notice(o, [r for r in mine if r is not o and not budget.broken(r)])
            return Selection(workload=workload, chosen=o,
                             reasons=[_why_chosen(o), *([flip] if flip else []), *cheaper])
        if len(cheaper) < 6:
            cheaper.append(f"cheaper {o.scheme} on {o.target} "
                           f"(${o.usd_per_m_output:.4f}/1M) breaks: {'; '.join(broken)}")
    return Selection(workload=workload, chosen=None,
                     reasons=["nothing meets the quality budget", *cheaper])


def cpu_selections(options: list[Option], budget: Budget,
                   workloads: list[Workload]) -> list[Selection]:
    """Per workload, the cheapest option on this CPU inside the budget: which engine to run
    here (each engine's speed measured on this machine), whatever the GPUs cost."""
    cpu = [o for o in options if o.kind == "cpu"]
    if not cpu:
        return []
    picks = []
    for wl in workloads:
        s = select(cpu, budget, wl.name)
        engines = {o.target.split(":")[0] for o in cpu if o.workload == wl.name}
        if s.chosen and len(engines) > 1:
            best = {e: min((o for o in cpu if o.workload == wl.name
                            and o.target.startswith(e + ":") and not budget.broken(o)),
                           key=lambda o: o.usd_per_m_output, default=None)
                    for e in sorted(engines)}
            rivals = [f"best on {e.removeprefix('cpu ')}: {o.scheme} ${o.usd_per_m_output:.4f}/1M"
                      for e, o in best.items() if o and o is not s.chosen]
            s.reasons.extend(rivals)
        picks.append(s)
    return picks


def _why_chosen(o: Option) -> str:
    if o.cost_measured:
        cost = "measured"
    elif o.usd_per_m_output_range:
        lo, hi = o.usd_per_m_output_range
        cost = f"estimated, may fall in ${lo:.4f}-{hi:.4f}"
    else:
        cost = "estimated"
    quality = f"KLD {o.kld:.4f} (measured)" if o.kld is not None else "quality not measured"
    return (f"cheapest inside the budget: {o.scheme} on {o.target} ({o.layout}) at "
            f"${o.usd_per_m_output:.4f}/1M output tokens ({cost}), {quality}, "
            f"verdict {o.verdict}")


def flip_notice(chosen: Option, rivals: list[Option]) -> str | None:
    """Rivals inside the budget whose $/1M output band reaches below the top of the
    chosen option's band: inside the error bands, one of them may be the cheaper."""
    top = chosen.interval()[1]
    close = [r for r in rivals if r.interval()[0] < top]
    if not close:
        return None

    def span(o: Option) -> str:
        lo, hi = o.interval()
        return f"${lo:.4f} (measured)" if o.cost_measured else f"${lo:.4f}-{hi:.4f}"

    more = f" and {len(close) - 3} more" if len(close) > 3 else ""
    return ("the ranking can flip inside the error bands: "
            + "; ".join(f"{r.scheme} on {r.target} may cost {span(r)}/1M output"
                        for r in close[:3])
            + f"{more}, against {span(chosen)} for {chosen.scheme} on {chosen.target}: "
            "measure both (tokenomy bench) before committing")
