"""Demand profiles for the traffic economics (plan/traffic.py): requests per second in
each hour of a day (24 values) or a week (168, Monday 00:00 first), from

    diurnal | bursty | flat   a built-in shape (catalog/traffic.yaml) x the workload's rate
    FILE.yaml                 `hours: [...]` (or a bare list), `unit: multiplier | requests_per_s`
    FILE.csv                  one value per line, or `hour,value`; an optional header whose
                              last column is `multiplier` or `requests_per_s`
    ledger:DB_URL             the gateway's usage ledger: requests per UTC hour of day,
                              averaged over the days it spans (opened read-only)

Multipliers scale the workload's rate; absolute profiles replace it. A negative, missing,
duplicated or non-numeric hour, or a count other than 24 or 168, is one InvalidInputError.
"""

from __future__ import annotations

import csv
import io
import math
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tokenomy.errors import CatalogError, InvalidInputError, problems
from tokenomy.numbers import finite

HOURS = (24, 168)  # a day, or a week
Unit = Literal["multiplier", "requests_per_s"]
_CATALOG = Path(__file__).resolve().parents[1] / "catalog" / "traffic.yaml"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shape(_Entry):
    name: str
    description: str
    hours: list[finite(ge=0, le=1000)]
    source: str
    as_of: str


class Defaults(_Entry):
    min_replicas: finite(ge=0, le=10_000, integer=True)
    cold_start_s: finite(ge=0, le=3600)
    idle_timeout_s: finite(ge=0, le=86_400)
    source: str
    as_of: str


class ServerlessPrice(_Entry):
    gpu: str
    usd_per_gpu_s: finite(gt=0, le=10)
    provider: str
    source: str
    as_of: str


class ApiPrice(_Entry):
    usd_per_m_input: finite(ge=0, le=10_000)
    usd_per_m_output: finite(ge=0, le=10_000)
    provider: str
    source: str
    as_of: str
    model: str | None = None  # a model entry ...
    moe: bool | None = None  # ... or a size tier: dense/MoE up to max_params_b billion
    max_params_b: finite(gt=0) | None = None


class ApiPrices(_Entry):
    models: list[ApiPrice]
    tiers: list[ApiPrice]


class TrafficCatalog(_Entry):
    schema_version: int
    shapes: list[Shape]
    defaults: Defaults
    serverless: list[ServerlessPrice]
    api: ApiPrices

    def shape(self, name: str) -> Shape | None:
        return next((s for s in self.shapes if s.name == name.strip().lower()), None)

    def serverless_price(self, gpu: str) -> ServerlessPrice | None:
        return next((p for p in self.serverless if p.gpu == gpu), None)

    def api_price(self, model: str, total_params: float, moe: bool) -> ApiPrice | None:
        """The model's own entry, else the first size tier holding its parameters."""
        entry = next((p for p in self.api.models if p.model == model), None)
        if entry is not None:
            return entry
        return next((t for t in self.api.tiers if bool(t.moe) == moe
                     and total_params <= t.max_params_b * 1e9), None)


@cache
def traffic_catalog() -> TrafficCatalog:
    """catalog/traffic.yaml, validated (loaded once)."""
    try:
        return TrafficCatalog.model_validate(yaml.safe_load(_CATALOG.read_text()))
    except (OSError, yaml.YAMLError) as e:
        raise CatalogError(f"{_CATALOG} cannot be read ({e.__class__.__name__}).") from None
    except ValidationError as e:
        raise CatalogError(f"{_CATALOG} is invalid: {problems(e)}") from None


class Profile(BaseModel):
    """Demand per hour, requests/s: what every option is priced against."""

    model_config = ConfigDict(frozen=True)

    name: str  # diurnal, a file name, ledger
    source: str  # where the numbers come from
    unit: Unit  # how the source gave them (multipliers were scaled by the workload's rate)
    requests_per_s: list[float]  # one per hour: 24 (a day) or 168 (a week)

    @property
    def mean(self) -> float:
        return sum(self.requests_per_s) / len(self.requests_per_s)

    @property
    def peak(self) -> float:
        return max(self.requests_per_s)

    def scaled(self, factor: float) -> Profile:
        return self.model_copy(update={"requests_per_s": [x * factor
                                                          for x in self.requests_per_s]})


def load_profile(spec: str, rate: float) -> Profile:
    """The profile named by `spec` (see the module docstring); multipliers x `rate`."""
    text = spec.strip()
    if text.lower().startswith("ledger:"):
        return _from_ledger(text[len("ledger:"):])
    shape = traffic_catalog().shape(text)
    if shape is not None:
        return _profile(shape.name, f"built-in shape: {shape.description} ({shape.source})",
                        "multiplier", shape.hours, rate, shape.name)
    path = Path(text).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml", ".csv"):
        known = ", ".join(s.name for s in traffic_catalog().shapes)
        raise InvalidInputError(f"--traffic {spec!r}: expected {known}, a .yaml/.csv file "
                                "of 24 (or 168) hourly values, or ledger:DB_URL.")
    if not path.is_file():
        raise InvalidInputError(f"--traffic: profile file {path} does not exist.")
    try:
        body = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e.__class__.__name__
        raise InvalidInputError(f"--traffic: profile file {path} cannot be read ({why}).") \
            from None
    reader = _csv if path.suffix.lower() == ".csv" else _yaml
    unit, values = reader(body, path)
    return _profile(path.name, str(path), unit, values, rate, str(path))


def _profile(name: str, source: str, unit: Unit, values: list, rate: float,
             where: str) -> Profile:
    """Checked: 24 or 168 finite values >= 0, not all zero; multipliers x rate."""
    for hour, value in enumerate(values):
        number = value if isinstance(value, int | float) and not isinstance(value, bool) \
            else None
        if number is None or not math.isfinite(number):
            raise InvalidInputError(f"traffic profile {where}: hour {hour} is not a finite "
                                    f"number (got {type(value).__name__}).")
        if number < 0:
            raise InvalidInputError(f"traffic profile {where}: hour {hour} is negative "
                                    f"({number:g}); demand must be >= 0.")
    if len(values) not in HOURS:
        raise InvalidInputError(f"traffic profile {where}: {len(values)} hourly values; give "
                                "24 (one day) or 168 (one week, Monday 00:00 first).")
    if not any(values):
        raise InvalidInputError(f"traffic profile {where}: every hour is 0; there is no "
                                "traffic to price.")
    factor = rate if unit == "multiplier" else 1.0
    return Profile(name=name, source=source, unit=unit,
                   requests_per_s=[float(v) * factor for v in values])


def _yaml(body: str, path: Path) -> tuple[Unit, list]:
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InvalidInputError(f"traffic profile {path} is not valid YAML{where}.") from None
    if isinstance(data, list):
        return "multiplier", data
    if not isinstance(data, dict) or not isinstance(data.get("hours"), list):
        raise InvalidInputError(f"traffic profile {path}: expected `hours: [24 or 168 "
                                "numbers]` and optionally `unit: multiplier|requests_per_s`.")
    unknown = set(data) - {"hours", "unit", "description", "source"}
    if unknown:
        raise InvalidInputError(f"traffic profile {path}: unknown field(s) {sorted(unknown)}; "
                                "allowed: hours, unit, description, source.")
    return _unit(data.get("unit", "multiplier"), path), data["hours"]


def _csv(body: str, path: Path) -> tuple[Unit, list]:
    rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(io.StringIO(body)), 1)
            if any(c.strip() for c in r)]
    unit: Unit = "multiplier"
    if rows and not _is_number(rows[0][1][-1]):  # a header names the unit
        if rows[0][1][-1] not in ("multiplier", "requests_per_s"):
            raise InvalidInputError(f"traffic profile {path} line {rows[0][0]} is not a "
                                    "number, nor a header naming the unit (multiplier or "
                                    "requests_per_s).")
        unit, rows = rows[0][1][-1], rows[1:]
    if not rows:
        raise InvalidInputError(f"traffic profile {path} holds no values.")
    values: dict[int, float] = {}
    for line, cells in rows:
        if len(cells) not in (1, 2) or len(cells) != len(rows[0][1]):
            raise InvalidInputError(f"traffic profile {path} line {line}: expected the same "
                                    "columns on every line (value, or hour,value), got "
                                    f"{len(cells)}.")
        if not all(_is_number(c) for c in cells):
            raise InvalidInputError(f"traffic profile {path} line {line}: a value is not a "
                                    "number.")
        hour = len(values) if len(cells) == 1 else float(cells[0])
        if hour != int(hour) or not 0 <= hour < max(HOURS):
            raise InvalidInputError(f"traffic profile {path} line {line}: the hour must be "
                                    "an integer from 0 to 23 (or 167).")
        if int(hour) in values:
            raise InvalidInputError(f"traffic profile {path} line {line}: hour {int(hour)} "
                                    "is given twice.")
        values[int(hour)] = float(cells[-1])
    if len(rows[0][1]) == 1:  # values in order: _profile checks the count
        return unit, list(values.values())
    return unit, _in_order(values, path)


def _in_order(values: dict[int, float], path: Path) -> list[float]:
    size = 24 if max(values) < 24 else 168
    missing = [h for h in range(size) if h not in values]
    if missing:
        shown = ", ".join(map(str, missing[:6])) + (" ..." if len(missing) > 6 else "")
        raise InvalidInputError(f"traffic profile {path}: hour(s) {shown} missing; give all "
                                f"{size} hours.")
    return [values[h] for h in range(size)]


def _unit(value, path: Path) -> Unit:
    if value not in ("multiplier", "requests_per_s"):
        raise InvalidInputError(f"traffic profile {path}: unit must be multiplier or "
                                "requests_per_s.")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _from_ledger(url: str) -> Profile:
    """Requests per UTC hour of day from the gateway's usage table (any status: each row
    is a request that arrived), averaged over the calendar days from first to last."""
    import sqlalchemy as sa

    from tokenomy.serve.ledger import Ledger, usage

    if not url.strip():
        raise InvalidInputError("--traffic ledger:DB_URL needs the database URL, e.g. "
                                "ledger:sqlite:///usage.db")
    ledger = Ledger(url.strip(), create=False)  # read-only: nothing created or written
    counts = [0] * 24
    first = last = None
    try:
        with ledger.engine.connect() as conn:
            rows = conn.execution_options(yield_per=10_000).execute(
                sa.select(usage.c.started_at))
            for (started,) in rows:
                counts[int(started // 3600) % 24] += 1
                first = started if first is None else min(first, started)
                last = started if last is None else max(last, started)
    finally:
        ledger.close()
    if first is None:
        raise InvalidInputError("--traffic ledger: the usage ledger holds no requests yet; "
                                "serve some traffic first or give a profile file.")
    days = int(last // 86_400) - int(first // 86_400) + 1
    return _profile("ledger", f"usage ledger: {sum(counts):,} requests over {days} day(s), "
                    "per UTC hour", "requests_per_s", [c / (days * 3600) for c in counts],
                    1.0, "ledger")


__all__ = ["Profile", "TrafficCatalog", "load_profile", "traffic_catalog"]
