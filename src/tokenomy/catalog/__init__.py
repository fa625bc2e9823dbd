"""The catalogs: GPUs, model architectures, precision schemes, engines and workloads.

Data lives in the YAML files beside this module, validated against ``schema.py`` at
load time. Users add or override entries with their own YAML files (same top-level
keys: ``gpus``, ``models``, ``schemes``, ``engines``, ``workloads``), passed as
``Catalog.load(extra=[...])`` or listed in the ``TOKENOMY_CATALOG`` environment
variable (paths separated by ``os.pathsep``). An entry with a known name replaces it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tokenomy.catalog.schema import Band, Engine, Gpu, Scheme, Workload
from tokenomy.errors import CatalogError, NotFoundError, problems
from tokenomy.modelspec import ModelSpec

__all__ = ["Catalog", "Engine", "Gpu", "Scheme", "Workload", "default_catalog"]

_HERE = Path(__file__).parent
_KINDS: dict[str, type[BaseModel]] = {
    "gpus": Gpu,
    "models": ModelSpec,
    "schemes": Scheme,
    "engines": Engine,
    "workloads": Workload,
}
_FILES = ("gpus.yaml", "models.yaml", "schemes.yaml", "engines.yaml", "workloads.yaml")

E = TypeVar("E", bound=BaseModel)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise CatalogError(f"catalog file {path} does not exist.") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CatalogError(f"catalog file {path} cannot be read "
                           f"({getattr(e, 'strerror', None) or e.__class__.__name__}).") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(f"catalog file {path} is not valid YAML{where}: "
                           f"{getattr(e, 'problem', None) or 'malformed'}.") from e
    if not isinstance(data, dict):
        raise CatalogError(f"catalog file {path} must be a mapping with keys {list(_KINDS)}.")
    unknown = set(data) - set(_KINDS) - {"schema_version"}
    if unknown:
        raise CatalogError(
            f"catalog file {path} has unknown section(s) {sorted(unknown)}; "
            f"allowed: {list(_KINDS)}."
        )
    return data


def _parse(kind: str, raw: Any, path: Path) -> list[BaseModel]:
    if not isinstance(raw, list):
        raise CatalogError(f"{path}: section {kind!r} must be a list of entries.")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(_KINDS[kind].model_validate(item))
        except ValidationError as e:
            name = item.get("name", f"#{i}") if isinstance(item, dict) else f"#{i}"
            raise CatalogError(f"{path}: {kind} entry {name!r} is invalid: "
                               f"{problems(e)}") from e
    return out


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


@dataclass(frozen=True)
class Catalog:
    gpus: dict[str, Gpu]
    models: dict[str, ModelSpec]
    schemes: dict[str, Scheme]
    engines: dict[str, Engine]
    workloads: dict[str, Workload]

    @classmethod
    def load(cls, extra: list[str | Path] = ()) -> Catalog:
        sections: dict[str, dict[str, BaseModel]] = {k: {} for k in _KINDS}
        paths = [_HERE / f for f in _FILES] + [Path(p) for p in extra]
        for path in paths:
            for kind, raw in _read_yaml(path).items():
                if kind == "schema_version":
                    continue
                for entry in _parse(kind, raw, path):
                    sections[kind][entry.name] = entry
        return cls(**sections)

    def _find(self, kind: str, table: dict[str, E], name: str, hint: str = "") -> E:
        wanted = _key(name)
        for entry in table.values():
            names = [entry.name, *getattr(entry, "aliases", [])]
            if wanted in {_key(n) for n in names}:
                return entry
        raise NotFoundError(kind, name, [_key(n) for n in table], hint)

    def gpu(self, name: str) -> Gpu:
        return self._find("GPU", self.gpus, name, "List them with `tokenomy catalog gpus`.")

    def model(self, name: str) -> ModelSpec:
        return self._find(
            "model",
            self.models,
            name,
            "List them with `tokenomy catalog models`, or pass a config.json directory "
            "or a .gguf file.",
        )

    def scheme(self, name: str) -> Scheme:
        hint = "List them with `tokenomy catalog schemes`."
        return self._find("scheme", self.schemes, name, hint)

    def engine(self, name: str) -> Engine:
        """An engine profile by name, or `FAMILY@VERSION` (`vllm@0.6.3`): the profile of
        that family whose `versions` covers the version; `vllm` alone is the current one."""
        family, _, version = name.partition("@")
        if not version:
            return self._with_fit(self._find("engine", self.engines, name))
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version

        try:
            wanted = Version(version)
        except InvalidVersion:
            raise CatalogError(f"engine {name!r}: {version!r} is not a version; write it "
                               "as NAME@X.Y[.Z], e.g. vllm@0.6.3") from None
        members = [e for e in self.engines.values() if _key(e.family_name) == _key(family)]
        if not members:
            self._find("engine", self.engines, family)  # unknown family: close names
        for entry in members:
            try:
                if entry.versions and wanted in SpecifierSet(entry.versions):
                    return self._with_fit(entry)
            except InvalidSpecifier as e:
                raise CatalogError(f"engine {entry.name!r}: versions {entry.versions!r} is "
                                   f"not a version specifier: {e}") from None
        return self._with_fit(next((e for e in members if e.versions is None), members[0]))

    def _with_fit(self, engine: Engine) -> Engine:
        """The engine with its fitted factors and error band (catalog/engine_fits.yaml)."""
        fit = _fits().get(engine.name)
        if fit is None or engine.band is not None:  # a calibrated entry keeps its own
            return engine
        efficiency = engine.efficiency.model_copy(update=fit["efficiency"])
        return engine.model_copy(update={"efficiency": efficiency,
                                         "band": Band.model_validate(fit["band"]),
                                         "fitted_on": fit["fitted_on"]})

    def workload(self, name: str) -> Workload:
        return self._find(
            "workload", self.workloads, name, "Or pass a YAML file describing one."
        )


@cache
def _fits() -> dict[str, dict]:
    """Engine factors fitted on published measurements by
    `benchmarks/plan_calibration.py --write` (absent: the hand-set factors, no band)."""
    path = _HERE / "engine_fits.yaml"
    if not path.is_file():
        return {}
    return {e["engine"]: e for e in _read_fits(path)}


def _read_fits(path: Path) -> list[dict]:
    try:
        data = yaml.safe_load(path.read_text())
        return list(data["fits"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise CatalogError(f"{path} is unreadable or malformed ({e}); regenerate it with "
                           "`python benchmarks/plan_calibration.py --write`") from None


@cache
def _cached(extra: tuple[str, ...]) -> Catalog:
    return Catalog.load(list(extra))


def default_catalog() -> Catalog:
    """The packaged catalog plus files named in ``TOKENOMY_CATALOG`` (loaded once)."""
    env = os.environ.get("TOKENOMY_CATALOG", "")
    return _cached(tuple(p for p in env.split(os.pathsep) if p))
