"""`tokenomy calibrate`: fit the planner to measurements and keep the result as a named
profile under $TOKENOMY_HOME/profiles/, which `plan --profile`, `bench --profile` and the
gateway's meter (`model_info.profile`) use, labelling their figures "calibrated on N
measurements".

Inputs: `tokenomy bench` results (result.json) and files of rows in the published
measurement format (`measurements: [...]`, benchmarks/published_measurements.yaml).
- CPU bench results (hardware 'cpu') fit the llama.cpp CPU roofline's factors
  (tokenomy.plan.cpu.CpuFactors) on each run's measured output tokens/s.
- GPU bench results and published rows fit an engine profile's efficiency factors
  (tokenomy.plan.fit), with the catalog's values as priors.
Nothing is stored unless every input is valid and agrees on the hardware and model.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ValidationError

from tokenomy.catalog.schema import Band
from tokenomy.errors import InvalidInputError, NotFoundError, TokenomyError
from tokenomy.home import cache_dir

__all__ = ["Profile", "calibrate", "load_profile"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Profile(BaseModel):
    name: str
    kind: Literal["cpu", "gpu"]
    engine: str  # engine profile (gpu) or 'llamacpp' / 'openvino' (cpu)
    hardware: str  # catalog GPU, or the CPU's model name
    model: str  # what was measured
    factors: dict[str, float]  # CpuFactors fields (cpu) or Efficiency fields (gpu)
    band: Band
    measurements: int
    fitted_on: list[str]
    inputs: list[str]
    created: str

    @property
    def label(self) -> str:
        return (f"calibrated on {self.measurements} measurements (profile {self.name!r}, "
                f"{self.hardware})")

    def cpu_factors(self):
        from tokenomy.plan.cpu import CpuFactors

        if self.kind != "cpu":
            raise InvalidInputError(f"profile {self.name!r} calibrates {self.hardware} GPUs, "
                                    "not this CPU")
        return CpuFactors(**{**self.factors, "engine": self.engine}, calibrated=self.label)


def profile_path(name: str) -> Path:
    if not NAME.match(name):
        raise InvalidInputError(f"profile name {name!r}: use letters, digits, '.', '_' or "
                                "'-' (at most 64)")
    return cache_dir("profiles") / f"{name}.json"


def load_profile(name: str) -> Profile:
    path = profile_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.json"))
        raise NotFoundError("profile", name, known,
                            "Make one with `tokenomy calibrate RESULT.json -o NAME`.")
    try:
        return Profile.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as e:
        raise TokenomyError(f"profile {path} is damaged ({e.__class__.__name__}); make it "
                            "again with `tokenomy calibrate`") from None


def calibrate(paths: list[str | Path], name: str, *, replace: bool = False) -> Profile:
    """Fit a profile to the measurements in `paths` and store it as `name`."""
    target = profile_path(name)
    if target.exists() and not replace:
        raise InvalidInputError(f"profile {name!r} exists ({target}); choose another name, "
                                "or pass --replace to fit it anew")
    if not paths:
        raise InvalidInputError("give at least one `tokenomy bench` result or measurement file")
    benches, rows = _read_inputs([Path(p) for p in paths])
    if benches and rows:
        raise InvalidInputError("mix of bench results and published rows: calibrate a CPU "
                                "from bench results, or a GPU engine from rows, one at a time")
    kinds = {"cpu" if b["hardware"] == "cpu" else "gpu" for b in benches}
    if kinds == {"cpu"}:
        from tokenomy.calibrate.cpu import fit_cpu

        profile = fit_cpu(benches, name)
    else:
        from tokenomy.calibrate.gpu import fit_gpu, rows_from_benches

        profile = fit_gpu(rows or rows_from_benches(benches), name)
    profile = profile.model_copy(update={
        "inputs": [str(Path(p).resolve()) for p in paths],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    tmp = target.with_suffix(".json.partial")
    tmp.write_text(profile.model_dump_json(indent=2))
    tmp.replace(target)
    return profile


def _read_inputs(paths: list[Path]) -> tuple[list[dict], list]:
    from tokenomy.plan.fit import Measurement

    benches, rows = [], []
    for path in paths:
        if not path.is_file():
            raise InvalidInputError(f"{path} does not exist")
        try:
            data = (json.loads(path.read_text()) if path.suffix == ".json"
                    else yaml.safe_load(path.read_text()))
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"{path} is neither JSON nor YAML "
                                    f"({e.__class__.__name__})") from None
        if isinstance(data, dict) and "runs" in data and "hardware" in data:
            benches.append(_checked_bench(path, data))
        elif isinstance(data, dict) and isinstance(data.get("measurements"), list):
            try:
                rows += [Measurement.model_validate(r) for r in data["measurements"]]
            except ValidationError as e:
                first = e.errors()[0]
                raise InvalidInputError(f"{path}: measurement row "
                                        f"{'.'.join(map(str, first['loc']))}: "
                                        f"{first['msg']}") from None
        else:
            raise InvalidInputError(f"{path} is not a `tokenomy bench` result (result.json) "
                                    "or a file of measurement rows (`measurements: [...]`)")
    if benches:
        where = {(b["hardware"], _bench_model(b)) for b in benches}
        if len(where) > 1:
            raise InvalidInputError("the bench results measure different hardware or models "
                                    f"({sorted(where)}): one profile is one model on one "
                                    "machine; calibrate them separately")
    return benches, rows


def _checked_bench(path: Path, data: dict) -> dict:
    runs = [r for r in data.get("runs") or [] if isinstance(r, dict)]
    if any(r.get("requests_cached") for r in runs):
        raise InvalidInputError(f"{path} holds answers served from a response cache, not "
                                "measurements of the engine: bench the engine again")
    good = [r for r in runs if r.get("requests_ok") and r.get("output_tokens_per_s")]
    if not good:
        raise InvalidInputError(f"{path} has no successful run to calibrate on (an empty or "
                                "failed bench): run `tokenomy bench` again")
    for r in good:
        if not all(math.isfinite(float(r.get(k) or 0)) for k in ("output_tokens_per_s",
                                                                 "concurrency_observed")):
            raise InvalidInputError(f"{path}: a run has non-finite figures")
    return {**data, "runs": good, "path": str(path)}


def _bench_model(bench: dict) -> str:
    estimate = bench.get("estimate") or {}
    return str(estimate.get("gguf") or bench.get("config", {}).get("plan_model")
               or bench.get("model"))
