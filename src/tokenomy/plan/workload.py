"""Resolve the inputs of a plan: the workload (name or YAML file) and the model
(catalog name, config.json directory, GGUF file, or the embedded default)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tokenomy.catalog import Catalog, Workload
from tokenomy.errors import InvalidInputError, ModelSpecError, problems
from tokenomy.modelspec import ModelSpec
from tokenomy.numbers import Range
from tokenomy.sources import embedded_model_path

DEFAULT_MODEL = "smollm2-135m"
# The command-line overrides of a workload, checked as the workload file's fields are.
OVERRIDES = {"requests_per_s": ("rate (requests/s)", Range(gt=0, le=1_000_000)),
             "input_tokens": ("input tokens", Range(ge=1, le=10_000_000, integer=True)),
             "output_tokens": ("output tokens", Range(ge=1, le=10_000_000, integer=True))}
_FILE_SUFFIXES = {".yaml", ".yml", ".json"}


def looks_like_path(name: str | Path) -> bool:
    """A name with a folder or a file suffix is a path, never a catalog name: when it does
    not exist it is reported as a missing file."""
    text = str(name)
    return "/" in text or "\\" in text or text.startswith(("~", ".")) or \
        Path(text).suffix.lower() in _FILE_SUFFIXES | {".gguf"}


def resolve_workload(
    workload: str | Path | Workload,
    catalog: Catalog,
    *,
    rate: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
) -> Workload:
    if isinstance(workload, Workload):
        base = workload
    elif looks_like_path(workload) or Path(workload).is_file():
        base = _workload_file(Path(workload))
    else:
        base = catalog.workload(str(workload))
    overrides = {"requests_per_s": rate, "input_tokens": input_tokens,
                 "output_tokens": output_tokens}
    for field, value in overrides.items():
        if value is not None:
            label, rng = OVERRIDES[field]
            rng.check(value, label)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=changes) if changes else base


def _workload_file(path: Path) -> Workload:
    if not path.is_file():
        raise InvalidInputError(f"workload file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e.__class__.__name__
        raise InvalidInputError(f"workload file {path} cannot be read ({why}).") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InvalidInputError(f"workload file {path} is not valid YAML{where}.") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"workload file {path} must be a YAML mapping with fields "
                                "input_tokens, output_tokens, mode, ... "
                                f"(got {type(data).__name__}).")
    try:
        return Workload.model_validate({"name": path.stem, "description": str(path), **data})
    except ValidationError as e:
        raise InvalidInputError(
            f"workload file {path} is invalid: {problems(e)}. Fields: input_tokens, "
            "output_tokens, mode (online|offline), ttft_target_s, tpot_target_ms, "
            "requests_per_s."
        ) from None


def resolve_model(model: str | Path | ModelSpec | None, catalog: Catalog) -> ModelSpec:
    """A ModelSpec from a catalog name, a config.json / model directory, or a GGUF file.
    With None: the embedded default model (its GGUF metadata when the package is there)."""
    if isinstance(model, ModelSpec):
        return model
    if model is None:
        path = embedded_model_path()
        return _with_catalog_facts(ModelSpec.from_gguf(path), catalog) if path else \
            catalog.model(DEFAULT_MODEL)
    path = Path(model)
    if path.suffix == ".gguf":
        return _with_catalog_facts(ModelSpec.from_gguf(path), catalog)
    if path.is_dir():
        if (path / "config.json").is_file():
            return _with_catalog_facts(ModelSpec.from_hf_config(path), catalog)
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return _with_catalog_facts(ModelSpec.from_gguf(ggufs[0]), catalog)
        raise ModelSpecError(f"{path} holds neither config.json nor a .gguf file.")
    if path.name == "config.json" and path.is_file():
        return _with_catalog_facts(ModelSpec.from_hf_config(path), catalog)
    if looks_like_path(model) and not path.exists():
        raise InvalidInputError(f"model path {path} does not exist: pass a catalog name "
                                "(`tokenomy catalog models`), a model directory, a "
                                "config.json or a .gguf file.")
    return catalog.model(str(model))


def _with_catalog_facts(spec: ModelSpec, catalog: Catalog) -> ModelSpec:
    """Carry published facts (training tokens, name) over from the catalog entry with the
    same architecture, so a local copy of a known model gets its precision risk."""
    shape = ("hidden_size", "num_layers", "intermediate_size", "vocab_size", "attention")
    for known in catalog.models.values():
        if all(getattr(known, f) == getattr(spec, f) for f in shape) and known.moe == spec.moe:
            return spec.model_copy(update={
                "name": known.name,
                "training_tokens": known.training_tokens,
                "published_params": known.published_params,
                "hf_id": known.hf_id,
            })
    return spec
