"""Settings of the `model: auto` router. The calibrated router is not built yet: a
config that names a calibration fails at start-up with a clear error."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator


class RouterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calibration: Path | None = None
    target_quality: float | None = 0.9
    target_cost_share: float | None = None
    k: int = 8
    prior_weight: float = 4.0

    @model_validator(mode="after")
    def _built(self):
        if self.calibration is not None:
            raise ValueError("router.calibration: the model:auto router is not available in "
                             "this version; send explicit model names")
        return self
