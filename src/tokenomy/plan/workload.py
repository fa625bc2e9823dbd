"""Resolve the inputs of a plan: the workload (name or YAML file) and the model
(catalog name, config.json directory, GGUF file, or the embedded default)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tokenomy.catalog import Catalog, Workload
from tokenomy.errors import InvalidInputError, ModelSpecError
from tokenomy.modelspec import ModelSpec
from tokenomy.sources import embedded_model_path

DEFAULT_MODEL = "smollm2-135m"


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
    elif Path(workload).suffix in {".yaml", ".yml", ".json"} or Path(workload).is_file():
        base = _workload_file(Path(workload))
    else:
        base = catalog.workload(str(workload))
    overrides = {"requests_per_s": rate, "input_tokens": input_tokens,
                 "output_tokens": output_tokens}
    for field, value in overrides.items():
        if value is not None and value <= 0:
            raise InvalidInputError(
                f"{field.replace('_', ' ')} must be positive, got {value:g}."
            )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=changes) if changes else base


def _workload_file(path: Path) -> Workload:
    if not path.is_file():
        raise InvalidInputError(f"workload file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
        return Workload.model_validate({"name": path.stem, "description": str(path), **data})
    except (yaml.YAMLError, TypeError) as e:
        raise InvalidInputError(f"workload file {path} is not a YAML mapping: {e}") from e
    except ValidationError as e:
        raise InvalidInputError(
            f"workload file {path} is invalid:\n{e}\nFields: input_tokens, output_tokens, "
            "mode (online|offline), ttft_target_s, tpot_target_ms, requests_per_s."
        ) from e


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
