"""What every finding reads: the ledger window, the gateway config, how the window
extrapolates to a month, and each deployment's token prices."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenomy.errors import TokenomyError
from tokenomy.review.data import LedgerData
from tokenomy.review.finding import MONTH_S
from tokenomy.serve.config import GatewayConfig

CHARS_PER_TOKEN = 4.0  # the estimate of tokens from characters, where only chars are known


@dataclass
class Context:
    data: LedgerData
    config: GatewayConfig
    _rates: dict = field(default_factory=dict)

    @property
    def observed_s(self) -> float:
        return self.data.observed.seconds

    @property
    def scale(self) -> float:
        """30 days / the seconds the ledger observed (0 when it observed nothing)."""
        return MONTH_S / self.observed_s if self.observed_s > 0 else 0.0

    def deployment(self, dep: str | None):
        return next((d for d in self.config.model_list if d.id == dep), None)

    def rate(self, dep: str | None):
        """The meter's Rate of a deployment of this config (at one request in flight),
        or None when it is not in the config or cannot be priced here."""
        if dep not in self._rates:
            self._rates[dep] = None
            d = self.deployment(dep)
            if d is not None:
                from tokenomy.serve.meter import Meter

                try:
                    one = self.config.model_copy(update={"model_list": [d]})
                    self._rates[dep] = Meter(one).rate(d.id)
                except TokenomyError:
                    pass
        return self._rates[dep]


__all__ = ["CHARS_PER_TOKEN", "Context"]
