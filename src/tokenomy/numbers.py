"""Numbers checked where they enter: one range type shared by the CLI's options (see
`tokenomy.cli.params`), the YAML files (gateway config, catalog, workloads) and the
gateway's request fields, so that NaN, infinities, negatives and out-of-range values are
refused everywhere with the same one-line message naming the accepted range.

    budget = Range(ge=0, le=1e9)
    budget.check(x, "--budget")             # InvalidInputError on nan, inf, -1, 1e308
    usd: finite(gt=0) = 1.0                 # a pydantic field with the same check
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, WrapValidator
from pydantic_core import PydanticCustomError

from tokenomy.errors import InvalidInputError


@dataclass(frozen=True)
class Range:
    """An accepted range; `integer` refuses fractions (and anything that is not a number)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    integer: bool = False

    def text(self) -> str:
        """'a finite number > 0', 'an integer >= 1 and <= 65535', ..."""
        bounds = [f"{op} {_fmt(v)}" for op, v in ((">", self.gt), (">=", self.ge),
                                                  ("<", self.lt), ("<=", self.le))
                  if v is not None]
        kind = "an integer" if self.integer else "a finite number"
        return " ".join([kind, " and ".join(bounds)]).strip()

    def problem(self, value: Any) -> str | None:
        """None when `value` is in range, else the message: 'must be ..., got ...'."""
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and self.integer:
            ok = isinstance(value, int) or (math.isfinite(value) and value == int(value))
        ok = ok and math.isfinite(value) and not (
            (self.gt is not None and value <= self.gt) or (self.ge is not None and value < self.ge)
            or (self.lt is not None and value >= self.lt)
            or (self.le is not None and value > self.le))
        return None if ok else f"must be {self.text()}, got {_shown(value)}"

    def check(self, value: Any, field: str) -> Any:
        """`value` itself, or InvalidInputError('FIELD must be ..., got ...')."""
        problem = self.problem(value)
        if problem:
            raise InvalidInputError(f"{field} {problem}")
        return value

    def parse(self, text: str, field: str) -> float | int:
        """A number from a command line or a `NAME=VALUE` pair, checked."""
        try:
            value: float | int = int(text) if self.integer else float(text)
        except ValueError:
            raise InvalidInputError(f"{field} must be {self.text()}, got "
                                    f"{_shown(text)}") from None
        return self.check(value, field)


def finite(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None, integer: bool = False) -> Any:
    """A pydantic field type: a number in the range (finite; an integer when asked); its
    error names the range, and the bounds appear in the JSON schema."""
    rng = Range(gt, ge, lt, le, integer)
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le))
              if v is not None}

    def validate(value: Any, handler) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise PydanticCustomError("number_range", rng.problem(value) or "")
        try:
            value = handler(value)
        except ValueError:  # pydantic's own ValidationError is a ValueError
            raise PydanticCustomError("number_range", rng.problem(value) or
                                      f"must be {rng.text()}, got {_shown(value)}") from None
        problem = rng.problem(value)
        if problem:
            raise PydanticCustomError("number_range", problem)
        return value

    base = int if integer else float
    return Annotated[base, Field(allow_inf_nan=False, **bounds) if not integer
                     else Field(**bounds), WrapValidator(validate)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 10_000 else f"{v:g}"


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else \
        format(value, "g") if isinstance(value, float) else str(value)
    return text if len(text) <= 30 else text[:27] + "..."


__all__ = ["Range", "finite"]
