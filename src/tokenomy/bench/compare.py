"""Several `tokenomy bench` results of one model on one machine side by side, and the
engine to run at each load level, chosen from the measurements.

The rule: at each concurrency level, among the engines whose run answered every request
and kept at least `MIN_GOODPUT` of them within both SLOs, the lowest measured $ per 1M
output tokens; when none does, the highest goodput, flagged. Levels an engine did not
run are left blank, never filled in.
"""

from __future__ import annotations

from pydantic import BaseModel

from tokenomy.bench.result import BenchResult, BenchRun
from tokenomy.errors import InvalidInputError

MIN_GOODPUT = 0.9


class Cell(BaseModel):
    output_tokens_per_s: float
    usd_per_1m_output: float | None
    goodput_fraction: float
    ok: bool  # every request answered


class Pick(BaseModel):
    concurrency: int
    engine: str
    usd_per_1m_output: float | None
    output_tokens_per_s: float
    meets_slo: bool
    reason: str


class Comparison(BaseModel):
    model: str
    hardware: str
    engines: list[str]
    startup_s: dict[str, float | None]
    levels: list[int]
    cells: dict[str, dict[int, Cell]]  # engine -> concurrency -> measured
    picks: list[Pick]
    slo: dict[str, float]
    measured: bool = True


def _cell(run: BenchRun) -> Cell:
    return Cell(output_tokens_per_s=run.output_tokens_per_s,
                usd_per_1m_output=run.usd_per_1m_output,
                goodput_fraction=run.goodput_fraction,
                ok=run.requests_failed == 0 and run.requests_ok > 0)


def compare(results: list[BenchResult]) -> Comparison:
    """The results must be closed-loop runs of one model on one kind of hardware."""
    if len(results) < 2:
        raise InvalidInputError("comparing engines needs two or more bench results (--engine "
                                "llamacpp --engine openvino, or --compare A.json B.json)")
    hardware = {r.hardware for r in results}
    if len(hardware) > 1:
        raise InvalidInputError(f"these bench results ran on different hardware "
                                f"({', '.join(sorted(hardware))}): compare engines on one "
                                "machine")
    if any(run.concurrency is None for r in results for run in r.runs):
        raise InvalidInputError("an open-loop (--rate) result cannot be lined up by "
                                "concurrency; compare --concurrency/--sweep/--levels runs")
    names = _names(results)
    cells = {name: {run.concurrency: _cell(run) for run in r.runs}
             for name, r in zip(names, results, strict=True)}
    levels = sorted({c for by_level in cells.values() for c in by_level})
    picks = [p for level in levels if (p := _pick(level, cells))]
    return Comparison(model=results[0].model, hardware=results[0].hardware, engines=names,
                      startup_s={n: r.startup_s for n, r in zip(names, results, strict=True)},
                      levels=levels, cells=cells, picks=picks, slo=results[0].slo)


def _names(results: list[BenchResult]) -> list[str]:
    names, seen = [], {}
    for r in results:
        seen[r.engine] = seen.get(r.engine, 0) + 1
        names.append(r.engine if seen[r.engine] == 1 else f"{r.engine} #{seen[r.engine]}")
    return names


def _pick(level: int, cells: dict[str, dict[int, Cell]]) -> Pick | None:
    here = {name: by_level[level] for name, by_level in cells.items() if level in by_level}
    if not here:
        return None
    good = {n: c for n, c in here.items()
            if c.ok and c.goodput_fraction >= MIN_GOODPUT and c.usd_per_1m_output is not None}
    if good:
        name = min(good, key=lambda n: good[n].usd_per_1m_output)
        others = [_why_not(n, c) for n, c in here.items() if n != name]
        reason = ("lowest measured $/1M output among engines meeting the SLOs"
                  + (f"; {'; '.join(others)}" if others else ""))
        cell, meets = good[name], True
    else:
        name = max(here, key=lambda n: here[n].goodput_fraction)
        cell, meets = here[name], False
        reason = (f"no engine kept {MIN_GOODPUT:.0%} of requests within the SLOs at this "
                  f"load; {name} kept the most ({cell.goodput_fraction:.0%})")
    return Pick(concurrency=level, engine=name, usd_per_1m_output=cell.usd_per_1m_output,
                output_tokens_per_s=cell.output_tokens_per_s, meets_slo=meets, reason=reason)


def _why_not(name: str, cell: Cell) -> str:
    price = "no price" if cell.usd_per_1m_output is None else f"${cell.usd_per_1m_output:.4f}"
    if not cell.ok:
        return f"{name} {price} but requests failed"
    if cell.goodput_fraction < MIN_GOODPUT:
        return f"{name} {price} but {cell.goodput_fraction:.0%} within the SLOs"
    return f"{name} {price}"
