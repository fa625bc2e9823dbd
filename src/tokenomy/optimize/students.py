"""Smaller models made from the one optimized (`tokenomy distill` students, or any local
model with its vocabulary) as candidates beside the quantize-only ones: each student is
compressed with the same schemes and every figure of quality is measured against the
*teacher*, so depth x bits and bits alone sit on one quality scale and one $ scale.

The verdict per workload says which wins inside the budget, whichever it is."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tokenomy.compress import get_scheme
from tokenomy.compress.budget import estimate_peak_bytes
from tokenomy.errors import InvalidInputError
from tokenomy.optimize.measure import Record, Settings, model_record
from tokenomy.optimize.search import BASE, Budget, Option, options_for
from tokenomy.sources import content_hash, resolve_source


class Student(BaseModel):
    label: str  # its options' prefix: '<label>/<scheme>'
    path: str
    sha256: str
    params: int
    layers: int
    teacher_layers: int | None = None  # from its distill manifest
    tokens_seen: int | None = None
    objective: str | None = None
    base: Record  # the student as it is, measured against the teacher
    records: list[Record]  # each scheme on the student, measured against the teacher


def labels(paths: list[str]) -> list[str]:
    """Directory names, made unique."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        name = Path(p).name.removesuffix(".gguf")
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def measure(paths: list[str], teacher: str | None, teacher_sha: str, names: list[str],
            settings: Settings, executor, done, max_kld: float | None = None,
            max_kld_p99: float | None = None) -> list[tuple[Student, object]]:
    """(Student, its ModelSpec) per path: every scheme compressed and evaluated against
    the teacher (cached like the teacher's candidates)."""
    from tokenomy.distill import manifest as M
    from tokenomy.modelspec import ModelSpec
    from tokenomy.optimize.executors import Task

    out = []
    for path, label in zip(paths, labels(paths), strict=True):
        source = resolve_source(path)
        if source.kind == "openvino":
            raise InvalidInputError(f"--student {path} is an OpenVINO IR; give the student's "
                                    "Hugging Face directory or GGUF.")
        sha = content_hash(source)
        if sha == teacher_sha:
            raise InvalidInputError(f"--student {path} is the model being optimized itself; "
                                    "give a smaller model made from it (tokenomy distill).")
        spec = ModelSpec.from_gguf(source.path) if source.kind == "gguf" else \
            ModelSpec.from_hf_config(source.path)
        tasks = [Task(model=str(source.path), scheme=n, source_sha=sha, settings=settings,
                      peak_bytes=estimate_peak_bytes(spec, get_scheme(n), source.size_bytes,
                                                     settings.calibration_samples,
                                                     settings.max_seq_length),
                      reference=teacher, reference_sha=teacher_sha, max_kld=max_kld,
                      max_kld_p99=max_kld_p99)
                 for n in names]
        records = executor.run(tasks, lambda r, _l=label: done(_renamed(r, _l)))
        base = model_record(str(source.path), sha, teacher, teacher_sha, settings)
        done(_renamed(base, label))
        made = M.read(source.path) if source.kind == "hf" else None
        out.append((Student(
            label=label, path=str(source.path), sha256=sha, params=spec.total_params,
            layers=spec.num_layers, teacher_layers=made.teacher.layers if made else None,
            tokens_seen=made.tokens_seen if made else None,
            objective=made.objective if made else None, base=base, records=records), spec))
    return out


def _renamed(record: Record, label: str) -> Record:
    name = label if record.scheme == BASE else f"{label}/{record.scheme}"
    return record.model_copy(update={"scheme": name})


def options(student: Student, spec, wl, gpus, catalog, prices, cpu_usd_per_hour
            ) -> list[Option]:
    """The student's options for one workload, named '<label>/<scheme>' ('<label>' for
    the student unquantized)."""
    timed = student.base.cpu_speed or student.base.openvino_speed
    base_gguf = Path(student.base.artifact) if timed and student.base.artifact else None
    opts = options_for(spec, student.records, wl, gpus, catalog, prices, cpu_usd_per_hour,
                       base_gguf, [student.base.cpu_speed, student.base.openvino_speed],
                       base=student.base)
    return [o.model_copy(update={
        "model": student.label,
        "scheme": student.label if o.scheme == BASE else f"{student.label}/{o.scheme}"})
        for o in opts]


def verdicts(opts: list[Option], budget: Budget, workloads: list[str]) -> list[str]:
    """Per workload: the cheapest option inside the budget among the model's own
    (quantize-only) and among the students', and which wins by how much."""
    out = []
    for wl in workloads:
        ok = [o for o in opts if o.workload == wl and not budget.broken(o)]
        own = min((o for o in ok if not o.model), key=_cost, default=None)
        small = min((o for o in ok if o.model), key=_cost, default=None)
        if small is None:
            near = min((o for o in opts if o.workload == wl and o.model and o.kld is not None),
                       key=lambda o: o.kld, default=None)
            why = (f"; the closest, {near.scheme} on {near.target}, has KLD {near.kld:.4f} "
                   f"against the teacher ({'; '.join(budget.broken(near))})") if near else ""
            won = f"{OWN} wins: {_say(own)}" if own else "nothing meets the budget"
            out.append(f"[{wl}] {won}; no student option meets the quality budget{why}")
        elif own is None:
            out.append(f"[{wl}] a student wins: {_say(small)}; no option of the model "
                       "itself meets the budget")
        else:
            winner, loser = (small, own) if _cost(small) < _cost(own) else (own, small)
            kind = "a student" if winner is small else OWN
            out.append(f"[{wl}] {kind} wins: {_say(winner)}, "
                       f"{1 - _cost(winner) / _cost(loser):.0%} below {_say(loser)}")
    return out


OWN = "the model itself (quantized or not)"


def _cost(o: Option) -> float:
    return o.usd_per_m_output


def _say(o: Option) -> str:
    kld = "KLD not measured" if o.kld is None else f"KLD {o.kld:.4f}"
    return (f"{o.scheme} on {o.target} at ${o.usd_per_m_output:.4f}/1M output "
            f"({'measured' if o.cost_measured else 'estimated'}), {kld}")
