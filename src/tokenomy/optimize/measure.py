"""One candidate's measurements: compress, evaluate, and (GGUF) time llama.cpp and
OpenVINO GenAI on this CPU. Cached by content hash (source model, scheme, settings, tool
versions), so a re-run with unchanged inputs recomputes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from tokenomy.compress.artifact import tool_versions
from tokenomy.errors import TokenomyError
from tokenomy.evaluate import EvalConfig, EvalResult
from tokenomy.home import cache_dir
from tokenomy.optimize.cpu_speed import CpuSpeed, cpu_name


class Settings(BaseModel):
    """Everything besides the model and scheme that changes a measurement."""

    eval: EvalConfig = EvalConfig()
    calibration: str = "sharegpt"
    calibration_samples: int = 64
    max_seq_length: int = 512
    seed: int = 0


class Record(BaseModel):
    scheme: str
    key: str
    artifact: str | None = None
    compress_seconds: float | None = None
    compress_peak_rss_bytes: int | None = None
    size_on_disk_bytes: int | None = None
    quality: EvalResult | None = None
    cpu_speed: CpuSpeed | None = None  # llama.cpp
    cpu_skipped: str | None = None  # why no CPU candidate: this CPU cannot run its engine
    openvino_speed: CpuSpeed | None = None  # OpenVINO GenAI on the same GGUF
    openvino_skipped: str | None = None
    error: str | None = None
    estimate_only: bool = False  # could not be measured here (no weights, too big)
    cached: bool = False


def task_key(source_sha: str, scheme: str, settings: Settings, reference_sha: str = "",
             max_kld: float | None = None, max_kld_p99: float | None = None) -> str:
    """`reference_sha`: the model quality is measured against when it is not the source
    (a student against its teacher); `max_kld`: the budget a budgeted scheme (auto) was
    allocated under."""
    parts = [source_sha, scheme, settings.model_dump(mode="json"), tool_versions()]
    parts += [reference_sha] if reference_sha else []
    parts += [{"max_kld": max_kld}] if max_kld is not None else []
    parts += [{"max_kld_p99": max_kld_p99}] if max_kld_p99 is not None else []
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _record_path(key: str) -> Path:
    return cache_dir("optimize") / f"{key}.json"


def cached(key: str) -> Record | None:
    """The stored record, its CPU speeds measured again where they were measured on
    another CPU or before an engine was measured (quality holds on any machine)."""
    path = _record_path(key)
    if not path.is_file():
        return None
    hit = Record.model_validate_json(path.read_text())
    stale = hit.cpu_speed is not None and hit.cpu_speed.cpu != cpu_name()
    unmeasured = (hit.cpu_speed is not None and hit.openvino_speed is None
                  and hit.openvino_skipped is None)  # cached before OpenVINO was
    if (stale or unmeasured) and hit.artifact:
        gguf = _gguf(Path(hit.artifact))
        if stale:
            hit.cpu_speed, hit.cpu_skipped = cpu_candidate(gguf)
        hit.openvino_speed, hit.openvino_skipped = openvino_candidate(gguf)
        path.write_text(hit.model_dump_json())
    return hit.model_copy(update={"cached": True})


def run_candidate(model: str | None, scheme: str, source_sha: str, settings: Settings,
                  reference: str | None = None, reference_sha: str = "",
                  max_kld: float | None = None, max_kld_p99: float | None = None) -> Record:
    """Compress + evaluate one scheme (in whatever process calls it); never raises for a
    scheme that cannot run: the record carries the error. Quality is measured against
    `reference` where given (a student's teacher), else against `model` itself. A
    budgeted scheme (auto) is allocated under `max_kld` (and `max_kld_p99`)."""
    from tokenomy.compress import compress, get_scheme
    from tokenomy.evaluate import evaluate

    budgeted = get_scheme(scheme).budgeted
    key = task_key(source_sha, scheme, settings, reference_sha, max_kld if budgeted else None,
                   max_kld_p99 if budgeted else None)
    if hit := cached(key):
        return hit
    artifact = cache_dir("optimize") / "artifacts" / key
    record = Record(scheme=scheme, key=key)
    try:
        if not (artifact / "tokenomy.json").is_file():
            compress(model, scheme, artifact, calibration=settings.calibration,
                     calibration_samples=settings.calibration_samples,
                     max_seq_length=settings.max_seq_length, seed=settings.seed,
                     max_kld=max_kld if budgeted else None,
                     max_kld_p99=max_kld_p99 if budgeted else None)
        manifest = json.loads((artifact / "tokenomy.json").read_text())
        record.artifact = str(artifact)
        record.compress_seconds = manifest["wall_time_s"]
        record.compress_peak_rss_bytes = manifest["peak_rss_bytes"]
        record.size_on_disk_bytes = manifest["size_on_disk_bytes"]
        record.quality = evaluate(artifact, reference if reference_sha else model,
                                  settings.eval)
        if get_scheme(scheme).output_format == "gguf":
            record.cpu_speed, record.cpu_skipped = cpu_candidate(_gguf(artifact))
            record.openvino_speed, record.openvino_skipped = openvino_candidate(
                _gguf(artifact))
    except TokenomyError as e:
        record.error = str(e)
        record.estimate_only = "RAM" in str(e)  # the memory budget refused the job
    except (RuntimeError, ValueError, OSError) as e:  # one scheme failing must not end the run
        record.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    _record_path(key).write_text(record.model_dump_json())
    return record


def model_record(model: str, source_sha: str, reference: str | None, reference_sha: str,
                 settings: Settings) -> Record:
    """A model as it is (a student, unquantized) measured against `reference`, with its
    speed on this CPU from its F16 GGUF; cached like a candidate. Scheme "base"."""
    from tokenomy.compress.hf_gguf import gguf_source
    from tokenomy.evaluate import evaluate
    from tokenomy.sources import resolve_source

    key = task_key(source_sha, "base", settings, reference_sha)
    if hit := cached(key):
        return hit
    record = Record(scheme="base", key=key)
    try:
        source = resolve_source(model)
        record.size_on_disk_bytes = source.size_bytes
        record.quality = evaluate(model, reference, settings.eval)
        gguf = gguf_source(source).path
        record.artifact = str(gguf)  # the GGUF its CPU speeds were timed on
        record.cpu_speed, record.cpu_skipped = cpu_candidate(gguf)
        record.openvino_speed, record.openvino_skipped = openvino_candidate(gguf)
    except TokenomyError as e:
        record.error = str(e)
    except (RuntimeError, ValueError, OSError) as e:
        record.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    _record_path(key).write_text(record.model_dump_json())
    return record


def _gguf(artifact: Path) -> Path:
    return artifact if artifact.suffix == ".gguf" else next(artifact.glob("*.gguf"))


def cpu_candidate(gguf: Path) -> tuple[CpuSpeed | None, str | None]:
    """(measured llama.cpp speed of `gguf` on this CPU, None), or (None, why not) when
    this CPU cannot run the engine: no candidate is offered that cannot run here."""
    from tokenomy.capability import check
    from tokenomy.optimize.cpu_speed import measure

    verdict = check("llamacpp", "gguf")
    if not verdict.ok:
        return None, verdict.message("CPU candidate")
    return measure(gguf), None


def openvino_candidate(gguf: Path) -> tuple[CpuSpeed | None, str | None]:
    """(measured OpenVINO GenAI speed of `gguf` on this CPU, None), or (None, why not):
    this CPU cannot run it, or OpenVINO cannot read this GGUF's tensor types. Measured in
    a child process: OpenVINO GenAI's GGUF reader dies with SIGFPE on some files (any F16
    GGUF, with 2026.x), and a crash there must not end the run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from tokenomy.capability import check
    from tokenomy.optimize.cpu_speed import measure_openvino

    verdict = check("openvino", "gguf")
    if not verdict.ok:
        return None, verdict.message("OpenVINO candidate")
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(measure_openvino, gguf).result(), None
    except BrokenProcessPool:
        return None, (f"OpenVINO GenAI crashed reading {gguf.name} (its GGUF reader does not "
                      "take this file's tensor types); no OpenVINO candidate for it")
    except (RuntimeError, ValueError, OSError) as e:  # e.g. a GGUF type it does not read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"OpenVINO GenAI cannot serve {gguf.name}: {first[:200]}"
