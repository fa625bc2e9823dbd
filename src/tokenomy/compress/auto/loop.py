"""Close the loop: write the allocation, measure its KLD on the held-out evaluation split
with llama.cpp (evaluate's own reference, scorer and metrics), and while the measured
KLD is over the budget move along the frontier (the next upgrades are the most
sensitive-per-byte tensors) to an estimate scaled by measured/predicted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenomy.compress.auto.allocate import Allocation, Frontier, Point, next_under
from tokenomy.compress.auto.writer import write_mixed
from tokenomy.errors import InvalidInputError
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

    def window_klds(self, gguf: Path) -> np.ndarray:
        """Mean KLD of each held-out window: [W]."""
        from tokenomy.evaluate import metrics
        from tokenomy.evaluate.scorers import LlamaCppScorer

        scorer = LlamaCppScorer(gguf, n_ctx=self.config.window_tokens)
        out = []
        for i, window in enumerate(self.ref.windows):
            logp = scorer.window_logp(window)[:, : self.ref.vocab_size]
            out.append(metrics.compare(self.ref.window_refs[i], logp, window[1:]).kld.mean())
        del scorer
        return np.asarray(out)

    @property
    def conditions(self) -> str:
        c = self.config
        return (f"{c.windows} held-out windows x {c.window_tokens} tokens of {c.dataset} "
                f"(evaluation split, seed {c.seed}), candidate on llama.cpp, base via "
                f"{self.ref.quality.engine}, CPU")


@dataclass
class Measured:
    point: Point
    kld_measured: float
    file: Path


def measure_once(source: ModelSource, alloc: Allocation, step_no: int, importance,
                 meter: Meter, target: Path) -> Measured:
    """Write one allocation (a size, no budget to loop on) and measure it."""
    write_mixed(source.path, target, alloc.types, importance)
    return Measured(Point(step_no, alloc.bytes, alloc.kld),
                    float(meter.window_klds(target).mean()), target)


def close_loop(source: ModelSource, front: Frontier, point: Point, max_kld: float | None,
               importance, meter: Meter, target: Path, step=None) -> list[Measured]:
    """Write `point`'s allocation to `target` and measure it; while over `max_kld`,
    upgrade along the frontier and rewrite. Returns every point measured (the last one
    is in `target`); raises when the budget is not met after ROUNDS upgrades."""
    step = step or (lambda _m: None)
    history: list[Measured] = []
    for _ in range(ROUNDS + 1):
        target.unlink(missing_ok=True)
        step(f"writing the allocation ({point.bytes / 1e6:.2f} MB, estimated KLD "
             f"{point.kld:.4f})")
        write_mixed(source.path, target, front.types_at(point.step), importance)
        step("measuring KLD on the held-out split (llama.cpp)")
        measured = float(meter.window_klds(target).mean())
        history.append(Measured(point, measured, target))
        if max_kld is None or measured <= max_kld:
            return history
        if point.step == len(front.moves):
            break
        ratio = measured / max(point.kld, 1e-12)
        point = next_under(front, point, 0.95 * max_kld / ratio)
    best = min(history, key=lambda h: h.kld_measured)
    raise InvalidInputError(
        f"no allocation met --max-kld {max_kld:g} when measured: the best reachable was "
        f"{best.kld_measured:.4g} measured ({best.point.bytes / 1e6:.2f} MB) after "
        f"{len(history)} tries; raise the budget.")
