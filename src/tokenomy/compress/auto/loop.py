"""Close the loop: write the allocation, measure its KLD (mean and p99 per token) on the
held-out evaluation split with llama.cpp (evaluate's own reference, scorer and metrics),
and while the measurement is over the budget move along the frontier (the next upgrades
are the most sensitive-per-byte tensors) to an estimate scaled by measured/predicted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenomy.compress.auto.allocate import Allocation, Frontier, Point, next_under
from tokenomy.compress.auto.budget import KldBudget, KldMeasure, step_down
from tokenomy.compress.auto.writer import write_mixed
from tokenomy.sources import ModelSource

ROUNDS = 4  # measured upgrades before giving up on a budget


def eval_config(dataset: str = "sharegpt", windows: int = 8, window_tokens: int = 512,
                seed: int = 0):
    """KLD-only evaluation on held-out windows of `dataset`'s evaluation split (one
    1-token answer: the reference needs one; answers are judged by `tokenomy eval`)."""
    from tokenomy.evaluate.runner import EvalConfig

    return EvalConfig(dataset=dataset, windows=windows, window_tokens=window_tokens,
                      prompts=1, max_new_tokens=1, answer_tokens=1, seed=seed)


class Meter:
    """Measures GGUF candidates against one base on one held-out reference."""

    def __init__(self, base: ModelSource, config, step=None):
        from tokenomy.evaluate.reference import build_reference

        self.config = config
        self.ref = build_reference(base, config, step or (lambda _m: None))

    def token_klds(self, gguf: Path) -> list[np.ndarray]:
        """KLD of every predicted token, per held-out window."""
        from tokenomy.evaluate import metrics
        from tokenomy.evaluate.scorers import LlamaCppScorer

        scorer = LlamaCppScorer(gguf, n_ctx=self.config.window_tokens)
        out = []
        for i, window in enumerate(self.ref.windows):
            logp = scorer.window_logp(window)[:, : self.ref.vocab_size]
            out.append(metrics.compare(self.ref.window_refs[i], logp, window[1:]).kld)
        del scorer
        return out

    def window_klds(self, gguf: Path) -> np.ndarray:
        """Mean KLD of each held-out window: [W]."""
        return np.asarray([k.mean() for k in self.token_klds(gguf)])

    def measure(self, gguf: Path) -> KldMeasure:
        """Mean and 99th percentile of the KLD per token over every held-out window (the
        windows are of equal length, so the mean is also the mean of window means)."""
        tokens = np.concatenate(self.token_klds(gguf))
        return KldMeasure(float(tokens.mean()), float(np.percentile(tokens, 99)))

    @property
    def conditions(self) -> str:
        c = self.config
        return (f"{c.windows} held-out windows x {c.window_tokens} tokens of {c.dataset} "
                f"(evaluation split, seed {c.seed}), candidate on llama.cpp, base via "
                f"{self.ref.quality.engine}, CPU")


@dataclass
class Measured:
    """One try: the frontier point written, its KLD measured on the held-out split, and
    where the file (or checkpoint directory) is."""

    point: Point
    kld: KldMeasure
    file: Path


def measure_once(source: ModelSource, alloc: Allocation, step_no: int, importance,
                 meter: Meter, target: Path) -> Measured:
    """Write one allocation (a size, no budget to loop on) and measure it."""
    write_mixed(source.path, target, alloc.types, importance)
    m = meter.measure(target)
    return Measured(Point(step_no, alloc.bytes, alloc.kld), m, target)


def close_loop(source: ModelSource, front: Frontier, point: Point, budget: KldBudget,
               importance, meter: Meter, target: Path, step=None) -> list[Measured]:
    """Write `point`'s allocation to `target` and measure it; while over `budget` (or
    none given: once), upgrade along the frontier and rewrite. Returns every point
    measured (the last one is in `target`); raises when the budget is not met after
    ROUNDS upgrades."""
    step = step or (lambda _m: None)
    history: list[Measured] = []
    for _ in range(ROUNDS + 1):
        target.unlink(missing_ok=True)
        step(f"writing the allocation ({point.bytes / 1e6:.2f} MB, estimated mean KLD "
             f"{point.kld:.4f})")
        write_mixed(source.path, target, front.types_at(point.step), importance)
        step("measuring KLD on the held-out split (llama.cpp)")
        m = meter.measure(target)
        history.append(Measured(point, m, target))
        if not budget.given or budget.met(m):
            if budget.p99 is not None and len(history) == 1:  # the start was a guess
                _descend(source, front, budget, importance, meter, target, step, history)
            return history
        if point.step == len(front.moves):
            break
        point = next_under(front, point, budget.next_target(point.kld, m))
    raise budget.missed([(h.kld, h.point.bytes) for h in history])


def _descend(source: ModelSource, front: Frontier, budget: KldBudget, importance,
             meter: Meter, target: Path, step, history: list[Measured]) -> None:
    """The first try met a p99 budget: step down (`budget.step_down`) with each cheaper
    try written beside `target` and moved onto it when it meets the budget. The last
    entry of `history` stays the file in `target`; a try that missed goes before it."""
    trial = target.with_name(target.stem + ".try.gguf")

    def attempt(point: Point) -> KldMeasure:
        step(f"the budget held with room: trying {point.bytes / 1e6:.2f} MB")
        write_mixed(source.path, trial, front.types_at(point.step), importance)
        m = meter.measure(trial)
        if budget.met(m):
            trial.replace(target)
        else:
            trial.unlink()
        return m

    kept = history[-1]
    for point, m, ok in step_down(front, budget, kept.point, kept.kld, attempt, ROUNDS):
        if ok:
            history.append(Measured(point, m, target))
        else:
            history.insert(len(history) - 1, Measured(point, m, trial))
