"""The quality budget a budgeted scheme loops on: a mean KLD per token, a 99th-percentile
KLD per token (the worst tokens, where a mean hides a few broken answers), or both.

The sensitivity table estimates the mean only. A p99 budget is met by measurement: the
first allocation is the one whose estimated mean a typical p99/mean ratio points at;
while over, each measured try rescales the next target by measured p99 / estimated mean,
as the mean budget rescales by measured mean / estimated mean; when the first try holds
with room, the GGUF loop steps down to what the ratio measured on it allows (`loop`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenomy.compress.auto.allocate import Frontier, Point, choose
from tokenomy.errors import InvalidInputError

# p99 / mean of per-token KLD measured on the embedded SmolLM2 (`tokenomy optimize`, 8
# held-out windows x 512 tokens): 5.1 (w4a16) to 7.4 (fp8-dynamic); gguf-q8_0 6.1, q6_k
# 7.1, q4_k_m 7.1, w8a16 5.3, nvfp4a16 6.4. The top of that range, so the first try
# usually lands inside; every later try uses the ratio measured on the file itself.
P99_OVER_MEAN = 7.5
MARGIN = 0.95  # aim a little under the budget, so one more try usually lands inside


@dataclass(frozen=True)
class KldMeasure:
    mean: float
    p99: float


@dataclass(frozen=True)
class KldBudget:
    mean: float | None = None
    p99: float | None = None

    def __post_init__(self):
        for flag, v in (("--max-kld", self.mean), ("--max-kld-p99", self.p99)):
            if v is not None and not v > 0:
                raise InvalidInputError(f"{flag} must be positive, not {v:g}.")

    @property
    def given(self) -> bool:
        return self.mean is not None or self.p99 is not None

    def met(self, m: KldMeasure) -> bool:
        return ((self.mean is None or m.mean <= self.mean)
                and (self.p99 is None or m.p99 <= self.p99))

    def start(self) -> float | None:
        """The estimated mean KLD to allocate for first."""
        if not self.given:
            return None
        aims = [v for v in (self.mean, None if self.p99 is None else self.p99 / P99_OVER_MEAN)
                if v is not None]
        return min(aims)

    def next_target(self, estimated: float, m: KldMeasure) -> float:
        """The estimated mean KLD to aim for after measuring `m` on an allocation
        estimated at `estimated`: each limit scaled by how far the estimate was off."""
        est = max(estimated, 1e-12)
        aims = []
        if self.mean is not None:
            aims.append(MARGIN * self.mean * est / max(m.mean, 1e-12))
        if self.p99 is not None:
            aims.append(MARGIN * self.p99 * est / max(m.p99, 1e-12))
        return min(aims)

    def mean_aim(self, m: KldMeasure) -> float:
        """The mean KLD that should still meet the budget, from a measured file: the mean
        budget, and the p99 budget over the p99/mean ratio measured on that file."""
        aims = [MARGIN * self.mean] if self.mean is not None else []
        if self.p99 is not None:
            aims.append(MARGIN * self.p99 * m.mean / max(m.p99, 1e-12))
        return min(aims)

    def describe(self) -> str:
        parts = [f"--max-kld {self.mean:g}" if self.mean is not None else "",
                 f"--max-kld-p99 {self.p99:g}" if self.p99 is not None else ""]
        return " and ".join(p for p in parts if p)

    def missed(self, tries: list[tuple[KldMeasure, int]]) -> InvalidInputError:
        """The error for a budget no measured try met: the closest try, with its figures.
        `tries`: (measure, file bytes) of each."""
        best = min(tries, key=lambda t: self._excess(t[0]))
        m, size = best
        return InvalidInputError(
            f"no allocation met {self.describe()} when measured: the best reachable was a "
            f"mean KLD of {m.mean:.4g} and p99 {m.p99:.4g} ({size / 1e6:.2f} MB) after "
            f"{len(tries)} tries; raise the budget.")

    def _excess(self, m: KldMeasure) -> float:
        """How far over the budget, relative (0 when met)."""
        over = [m.mean / self.mean if self.mean else 0.0, m.p99 / self.p99 if self.p99 else 0.0]
        return max(over)


def check_budget(scheme: str, budget: KldBudget, size_mb: float | None) -> None:
    """A budgeted scheme needs a quality budget or a size, each positive."""
    if not budget.given and size_mb is None:
        raise InvalidInputError(f"--scheme {scheme} needs a quality budget (--max-kld, mean "
                                "KLD per token, e.g. 0.01; and/or --max-kld-p99) or a size "
                                "(--size-mb).")
    if size_mb is not None and size_mb <= 0:
        raise InvalidInputError("--size-mb must be positive.")


def first_point(front: Frontier, budget: KldBudget, size_bytes: int | None) -> Point:
    """Where the measured loop starts: the cheapest point whose estimate is under
    `budget.start()` (within `size_bytes`), or with no budget the most accurate point
    within the size. A mean budget the estimate cannot reach is refused here; a p99 one
    is not (the estimate knows no p99): it starts from the most accurate point there is."""
    try:
        return choose(front, budget.start(), size_bytes)
    except InvalidInputError:
        if budget.mean is not None:
            choose(front, budget.mean, size_bytes)  # raises the mean's own message
        if size_bytes is not None and front.points[0].bytes > size_bytes:
            raise
        fits = [p for p in front.points if size_bytes is None or p.bytes <= size_bytes]
        return min(fits, key=lambda p: p.kld)


def step_down(front: Frontier, budget: KldBudget, point: Point, measured: KldMeasure,
              attempt, rounds: int = 4) -> list[tuple[Point, KldMeasure, bool]]:
    """After a first try at `point` met a p99 budget (whose start was a typical ratio):
    while the p99/mean ratio measured on the kept try points at a cheaper frontier point,
    `attempt(point)` writes and measures it (returning its KldMeasure); a try that meets
    the budget is kept and the walk goes on from it, one that misses ends it. Returns
    each try as (point, measure, kept)."""
    tries = []
    for _ in range(rounds):
        try:
            cheaper = choose(front, budget.mean_aim(measured))
        except InvalidInputError:
            break
        if cheaper.bytes >= point.bytes:
            break
        m = attempt(cheaper)
        tries.append((cheaper, m, budget.met(m)))
        if not tries[-1][2]:
            break
        point, measured = cheaper, m
    return tries
