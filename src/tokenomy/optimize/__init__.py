"""`tokenomy.optimize`: the cheapest deployment that meets a quality budget.

Quality is measured (compress + evaluate each scheme on the actual model, here); speed
and cost are estimated by the planner for GPUs and measured with llama.cpp and OpenVINO
GenAI for this machine's CPU. Every option says which of its figures are measured."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from tokenomy.catalog import Workload, default_catalog
from tokenomy.compress import SCHEMES
from tokenomy.compress.artifact import now, tool_versions
from tokenomy.compress.budget import estimate_peak_bytes
from tokenomy.home import cache_dir
from tokenomy.optimize import students as S
from tokenomy.optimize.cpu_speed import DEFAULT_CPU_USD_PER_HOUR, CpuSpeed, cpu_name
from tokenomy.optimize.executors import LocalExecutor, RayExecutor, Task
from tokenomy.optimize.measure import Record, Settings
from tokenomy.optimize.search import (
    CPU_STREAMS,
    Budget,
    Option,
    Selection,
    cpu_selections,
    options_for,
    pareto,
    select,
)
from tokenomy.optimize.students import Student
from tokenomy.plan.workload import resolve_workload
from tokenomy.sources import content_hash, resolve_source

__all__ = ["Budget", "OptimizeResult", "Settings", "optimize"]
SCHEMA_VERSION = 1


class OptimizeResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    created_at: str
    model: dict
    workloads: list[Workload]
    gpus: list[str]
    cpu_usd_per_hour: float
    budget: Budget
    settings: Settings
    records: list[Record]
    base_cpu: CpuSpeed | None
    base_openvino: CpuSpeed | None = None
    options: list[Option]
    frontier: list[Option]
    selections: list[Selection]
    # the same choice among this CPU's options only: which engine (and scheme) to run here
    cpu_selections: list[Selection] = []
    # smaller models made from this one, measured against it (optimize --student)
    students: list[Student] = []
    student_verdicts: list[str] = []  # per workload: a student or quantize-only, by how much
    tool_versions: dict[str, str]
    conditions: str


def _base_cpu_speed(source, sha: str, engine: str = "llamacpp") -> CpuSpeed | None:
    """A GGUF base model's own speed on this CPU through `engine` (cached per CPU)."""
    from tokenomy.optimize.measure import cpu_candidate, openvino_candidate

    if source.kind != "gguf":
        return None
    path = cache_dir("optimize") / (f"cpu-{sha[:24]}.json" if engine == "llamacpp"
                                    else f"cpu-{engine}-{sha[:24]}.json")
    if path.is_file():
        speed = CpuSpeed.model_validate_json(path.read_text())
        if speed.cpu == cpu_name():  # measured on this CPU, not on another machine's
            return speed
    candidate = cpu_candidate if engine == "llamacpp" else openvino_candidate
    speed, _ = candidate(source.path)
    if speed is not None:
        path.write_text(speed.model_dump_json())
    return speed


def optimize(
    model: str | None = None,
    workloads: list[str] = ("chat", "batch"),
    gpus: list[str] | None = None,
    schemes: list[str] | None = None,
    budget: Budget | None = None,
    settings: Settings | None = None,
    *,
    cpu_usd_per_hour: float = DEFAULT_CPU_USD_PER_HOUR,
    prices: dict[str, float] | None = None,
    executor: LocalExecutor | RayExecutor | None = None,
    done: Callable[[Record], None] | None = None,
    students: list[str] = (),
) -> OptimizeResult:
    """`students`: smaller models made from `model` (tokenomy distill), each compressed
    with the same schemes and measured against `model`, priced beside it."""
    from tokenomy.compress import get_scheme
    from tokenomy.modelspec import ModelSpec

    catalog = default_catalog()
    budget, settings = budget or Budget(), settings or Settings()
    names = [get_scheme(s).name for s in (schemes or list(SCHEMES))]
    wls = [resolve_workload(w, catalog) for w in workloads]
    gpu_names = [catalog.gpu(g).name for g in (gpus or list(catalog.gpus))]
    if model is not None and not Path(model).exists() and str(model) in _catalog_names(catalog):
        if students:
            from tokenomy.errors import InvalidInputError

            raise InvalidInputError("--student needs the teacher's weights to measure against;"
                                    f" {model} is a catalog name: pass its local files.")
        return _estimate_only(catalog.model(str(model)), names, wls, gpu_names, budget,
                              settings, cpu_usd_per_hour, prices, catalog)
    source = resolve_source(model)
    sha = content_hash(source)
    spec = ModelSpec.from_gguf(source.path) if source.kind == "gguf" else \
        ModelSpec.from_hf_config(source.path)
    tasks = [
        Task(model=str(model) if model else None, scheme=name, source_sha=sha,
             settings=settings, max_kld=budget.max_kld, max_kld_p99=budget.max_kld_p99,
             peak_bytes=estimate_peak_bytes(spec, get_scheme(name), source.size_bytes,
                                            settings.calibration_samples,
                                            settings.max_seq_length))
        for name in names
    ]
    executor = executor or LocalExecutor()
    records = executor.run(tasks, done or (lambda _r: None))
    made = S.measure(list(students), model, sha, names, settings, executor,
                     done or (lambda _r: None), budget.max_kld, budget.max_kld_p99)
    base_cpu = _base_cpu_speed(source, sha)
    base_openvino = _base_cpu_speed(source, sha, "openvino")
    base_gguf = source.path if source.kind == "gguf" else None
    options = [
        o for wl in wls
        for o in options_for(spec, records, wl, gpu_names, catalog, prices or {},
                             cpu_usd_per_hour, base_gguf, [base_cpu, base_openvino])
    ]
    options += [o for wl in wls for student, s_spec in made
                for o in S.options(student, s_spec, wl, gpu_names, catalog, prices or {},
                                   cpu_usd_per_hour)]
    ev = settings.eval
    return OptimizeResult(
        created_at=now(),
        model={"name": source.name, "path": str(source.path), "sha256": sha,
               "params": spec.total_params},
        workloads=wls, gpus=gpu_names, cpu_usd_per_hour=cpu_usd_per_hour, budget=budget,
        settings=settings, records=records, base_cpu=base_cpu, base_openvino=base_openvino,
        options=options,
        frontier=pareto([o for o in options if o.workload == wls[0].name]),
        selections=[select(options, budget, wl.name) for wl in wls],
        cpu_selections=cpu_selections(options, budget, wls),
        students=[student for student, _ in made],
        student_verdicts=S.verdicts(options, budget, [wl.name for wl in wls]) if made else [],
        tool_versions=tool_versions(),
        conditions=(
            ("students' quality measured against the teacher; " if made else "") +
            f"quality measured on this machine: {ev.windows} x {ev.window_tokens} held-out "
            f"{ev.dataset} tokens and {ev.prompts} greedy answers per scheme, "
            f"{settings.calibration_samples} calibration samples; GPU speed and cost "
            "estimated by `tokenomy plan`; CPU speed measured with llama.cpp and OpenVINO "
            f"GenAI (one stream; offline workloads add the CPU planner's estimated batching "
            f"gain at {CPU_STREAMS} streams) at ${cpu_usd_per_hour:g}/hour"
        ),
    )


def _catalog_names(catalog) -> set[str]:
    return {n for m in catalog.models.values() for n in (m.name, *m.aliases)}


def _estimate_only(spec, names, wls, gpu_names, budget, settings, cpu_usd_per_hour, prices,
                   catalog) -> OptimizeResult:
    """A catalog model without local weights: cost from the planner, quality from the
    precision-risk estimate, every option labelled as not measured."""
    from tokenomy.compress import get_scheme

    records = [Record(scheme=n, key="", error="no local weights", estimate_only=True)
               for n in names if get_scheme(n).backend == "llmcompressor"]
    options = [o for wl in wls for o in options_for(spec, records, wl, gpu_names, catalog,
                                                      prices or {}, cpu_usd_per_hour, None)]
    return OptimizeResult(
        created_at=now(), model={"name": spec.name, "path": "catalog", "sha256": "",
                                 "params": spec.total_params},
        workloads=wls, gpus=gpu_names, cpu_usd_per_hour=cpu_usd_per_hour, budget=budget,
        settings=settings, records=records, base_cpu=None, options=options, frontier=[],
        selections=[select(options, budget, wl.name) for wl in wls],
        cpu_selections=cpu_selections(options, budget, wls),
        tool_versions=tool_versions(),
        conditions="estimates only: no local weights to measure; GPU cost from `tokenomy "
        "plan`, quality from the precision-risk estimate (confirm with `tokenomy eval`)",
    )


def reselect(result: OptimizeResult, budget: Budget) -> OptimizeResult:
    """The same measured options under another budget (nothing is recomputed)."""
    selections = [select(result.options, budget, wl.name) for wl in result.workloads]
    verdicts = S.verdicts(result.options, budget, [wl.name for wl in result.workloads]) \
        if result.students else []
    return result.model_copy(update={
        "budget": budget, "selections": selections, "student_verdicts": verdicts,
        "cpu_selections": cpu_selections(result.options, budget, result.workloads)})


def load_result(path) -> OptimizeResult:
    from pathlib import Path

    from tokenomy.errors import InvalidInputError

    data = json.loads(Path(path).read_text())
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InvalidInputError(f"{path} has results schema {data.get('schema_version')}; "
                                f"this tokenomy reads {SCHEMA_VERSION}.")
    return OptimizeResult.model_validate(data)
