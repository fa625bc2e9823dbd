"""The `model: auto` router: each request goes to the cheapest deployment whose predicted
quality on it clears a calibrated threshold.

Quality is agreement with the reference deployment's answer: the same first
`answer_words` words at temperature 0, the measure `tokenomy eval` reports as answer
agreement. Calibration asks every deployment to answer the same prompts, labels each
answer ok or not against the reference's, and keeps the prompts' embeddings.

A request's predicted quality on a deployment is the similarity-weighted share of ok
labels among its `k` nearest calibration prompts, shrunk towards the deployment's prior
(its `tokenomy eval` answer agreement when given, else its calibration average) with the
weight of `prior_weight` prompts. Its difficulty is 1 - the predicted quality on the
cheapest deployment. The threshold tau is chosen by two-fold cross-fitting on the
calibration prompts (each prompt predicted from the other half only): the lowest-cost tau
whose held-out quality reaches `target_quality`, or the best quality within
`target_cost_share` of the reference's cost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tokenomy.errors import InvalidInputError, problems
from tokenomy.numbers import finite

SCHEMA_VERSION = 1
# Quality is not given up for less than this share of the reference's cost: on tiers
# that cost nearly the same, routing away from the reference only loses answers.
COST_TOLERANCE = 0.01


class RouterSettings(BaseModel):
    """The `router:` section of the gateway config."""

    model_config = ConfigDict(extra="forbid")

    calibration: Path | None = None  # a `tokenomy route calibrate` result
    # Any of these re-tunes tau on the calibration's own labels at start-up (no new
    # answers needed); unset, the calibration's tau stands.
    target_quality: finite(gt=0, le=1) | None = None
    target_cost_share: finite(gt=0, le=1) | None = None
    k: finite(ge=1, le=100_000, integer=True) | None = None
    prior_weight: finite(ge=0, le=1_000_000) | None = None

    @model_validator(mode="after")
    def _one_target(self):
        if self.target_quality is not None and self.target_cost_share is not None:
            raise ValueError("router: give target_quality or target_cost_share, not both")
        return self


@dataclass
class DeploymentRef:
    """A deployment to calibrate: where to ask it and what a token costs there."""

    name: str  # the model name clients send
    base_url: str  # ending in /v1
    model: str  # the upstream's model id
    usd_per_input_token: float
    usd_per_output_token: float
    quality_prior: float | None = None  # `tokenomy eval` answer agreement, when known
    headers: dict[str, str] = field(default_factory=dict)


class DeploymentCalibration(BaseModel):
    usd_per_request: float  # mean metered cost of the calibration answers
    labels: list[bool]  # answer agrees with the reference's, per calibration prompt
    prior: float
    prior_source: str


class HeldOut(BaseModel):
    prompts: int
    quality: float  # share of answers that agree with the reference's
    cost_share: float  # $ against sending every prompt to the reference
    routed: dict[str, float]  # share of prompts per deployment


class Calibration(BaseModel):
    schema_version: int = SCHEMA_VERSION
    reference: str
    deployments: dict[str, DeploymentCalibration]
    prompts: list[str]
    embeddings: list[list[float]]
    embedder: str
    tau: float
    k: int = 8
    prior_weight: float = 4.0
    target_quality: float | None = None
    target_cost_share: float | None = None
    held_out: HeldOut
    answer_words: int
    max_tokens: int
    created: str
    measured: bool = True
    conditions: str

    @model_validator(mode="after")
    def _consistent(self):
        n = len(self.prompts)
        if len(self.embeddings) != n or any(len(d.labels) != n
                                            for d in self.deployments.values()):
            raise ValueError("prompts, embeddings and labels differ in length")
        if self.reference not in self.deployments:
            raise ValueError(f"reference {self.reference!r} is not among the deployments")
        return self

    def save(self, path: Path) -> None:
        path = Path(path)
        if path.exists():
            raise InvalidInputError(f"{path} exists: choose a new file (a calibration is "
                                    "never overwritten)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:  # the messages name the file, never quote it: it may be anything, keys too
            return cls.model_validate_json(Path(path).read_bytes())
        except OSError as exc:
            raise InvalidInputError(f"router.calibration {path}: cannot read it "
                                    f"({exc.strerror}); make one with `tokenomy route "
                                    "calibrate`") from None
        except ValidationError as exc:
            raise InvalidInputError(f"router.calibration {path} is not a `tokenomy route "
                                    f"calibrate` result: {problems(exc)}") from None
        except ValueError as exc:
            raise InvalidInputError(f"router.calibration {path} is not a `tokenomy route "
                                    f"calibrate` result ({exc.__class__.__name__})") from None

    def retuned(self, settings: RouterSettings) -> Calibration:
        """This calibration with tau chosen again for the settings' target, k and prior
        weight, on the stored labels."""
        if all(getattr(settings, f) is None for f in ("target_quality", "target_cost_share",
                                                      "k", "prior_weight")):
            return self
        k = settings.k or self.k
        weight = self.prior_weight if settings.prior_weight is None else settings.prior_weight
        tq, tc = settings.target_quality, settings.target_cost_share
        if tq is None and tc is None:
            tq, tc = self.target_quality, self.target_cost_share
        emb = np.asarray(self.embeddings, dtype=np.float32)
        labels = {d: np.asarray(v.labels, dtype=bool) for d, v in self.deployments.items()}
        priors = {d: v.prior for d, v in self.deployments.items()}
        cost = {d: v.usd_per_request for d, v in self.deployments.items()}
        tau, held_out = _tune(emb, labels, priors, cost, self.reference, k, weight, tq, tc)
        return self.model_copy(update={"tau": tau, "held_out": held_out, "k": k,
                                       "prior_weight": weight, "target_quality": tq,
                                       "target_cost_share": tc})

    def by_cost(self) -> list[str]:
        return _by_cost({d: v.usd_per_request for d, v in self.deployments.items()},
                        self.reference)


def _by_cost(cost: dict[str, float], reference: str) -> list[str]:
    """Deployment names, cheapest first (the reference last among equals)."""
    return sorted(cost, key=lambda d: (cost[d], d == reference, d))


@dataclass(frozen=True)
class Decision:
    deployment: str
    predicted_quality: float
    difficulty: float
    tau: float
    reason: str


def predict(embeddings: np.ndarray, labels: np.ndarray, prior: float, queries: np.ndarray,
            k: int, prior_weight: float) -> np.ndarray:
    """Predicted quality of each query: its k nearest neighbours' labels weighted by
    cosine similarity, shrunk to `prior` with the weight of `prior_weight` neighbours."""
    if len(embeddings) == 0:
        return np.full(len(queries), prior)
    sims = queries @ embeddings.T  # unit vectors: cosine similarity
    k = min(k, embeddings.shape[0])
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = np.clip(np.take_along_axis(sims, nearest, axis=1), 0, None)
    y = labels[nearest].astype(float)
    weight = w.sum(1) + prior_weight
    safe = np.where(weight > 0, weight, 1.0)  # no weight at all (prior_weight 0): the prior
    return np.where(weight > 0, ((w * y).sum(1) + prior_weight * prior) / safe, prior)


def choose(order: Sequence[str], reference: str, quality: dict[str, float], tau: float
           ) -> str:
    """The first (cheapest) deployment predicted at or above tau; the reference is always
    good enough for itself."""
    for name in order:
        if name == reference or quality[name] >= tau:
            return name
    return reference


class Router:
    def __init__(self, calibration: Calibration, embedder=None,
                 settings: RouterSettings | None = None):
        self.calibration = c = calibration.retuned(settings or RouterSettings())
        self.embedder = embedder
        self.k, self.prior_weight, self.tau = c.k, c.prior_weight, c.tau
        self._emb = np.asarray(c.embeddings, dtype=np.float32)
        self._labels = {d: np.asarray(v.labels, dtype=bool) for d, v in c.deployments.items()}
        self.order = c.by_cost()

    def decide(self, text: str, available: Sequence[str]) -> Decision:
        """The deployment for a request whose last user message is `text`, among the
        model names `available` (others are skipped: not served by this gateway)."""
        c = self.calibration
        order = [d for d in self.order if d in available]
        if not order:
            raise LookupError(f"the router was calibrated on {sorted(c.deployments)}, none "
                              f"of which is served here ({', '.join(available)})")
        if self.embedder is None:
            from tokenomy.serve.embed import Embedder

            self.embedder = Embedder()
        query = self.embedder.encode([text or ""])
        if query.shape[1] != self._emb.shape[1]:
            raise InvalidInputError(
                f"the calibration was embedded by {c.embedder} ({self._emb.shape[1]} "
                f"dimensions), this router embeds with {getattr(self.embedder, 'name', '?')} "
                f"({query.shape[1]}): calibrate again with `tokenomy route calibrate`")
        quality = {d: float(predict(self._emb, self._labels[d], c.deployments[d].prior, query,
                                    self.k, self.prior_weight)[0]) if d != c.reference else 1.0
                   for d in order}
        chosen = choose(order, c.reference if c.reference in order else order[-1], quality,
                        self.tau)
        difficulty = 1.0 - quality[order[0]]
        reason = (f"auto: predicted quality {quality[chosen]:.2f} >= tau {self.tau:.2f} on "
                  f"{chosen} (difficulty {difficulty:.2f}; "
                  + ", ".join(f"{d} {quality[d]:.2f}" for d in order) + ")")
        return Decision(chosen, quality[chosen], difficulty, self.tau, reason)


# -- calibration ----------------------------------------------------------------------
def agree(answer: str, reference: str, words: int) -> bool:
    return answer.split()[:words] == reference.split()[:words]


def _cross_fitted(emb: np.ndarray, labels: dict[str, np.ndarray], priors: dict[str, float],
                  reference: str, k: int, prior_weight: float) -> dict[str, np.ndarray]:
    """Each prompt's predicted quality on each deployment from the other half only."""
    n = len(emb)
    fold = np.arange(n) % 2
    out = {}
    for d, y in labels.items():
        if d == reference:
            out[d] = np.ones(n)
            continue
        p = np.empty(n)
        for f in (0, 1):
            test, train = fold == f, fold != f
            p[test] = predict(emb[train], y[train], priors[d], emb[test], k, prior_weight)
        out[d] = p
    return out


def _outcome(taus_pred: dict[str, np.ndarray], labels: dict[str, np.ndarray],
             cost: dict[str, float], order: list[str], reference: str, tau: float) -> HeldOut:
    n = len(labels[reference])
    chosen = [choose(order, reference, {d: taus_pred[d][i] for d in order}, tau)
              for i in range(n)]
    quality = float(np.mean([labels[d][i] or d == reference for i, d in enumerate(chosen)]))
    spent = sum(cost[d] for d in chosen)
    return HeldOut(prompts=n, quality=quality,
                   cost_share=spent / (cost[reference] * n) if cost[reference] else 1.0,
                   routed={d: chosen.count(d) / n for d in order})


def choose_tau(predicted: dict[str, np.ndarray], labels: dict[str, np.ndarray],
               cost: dict[str, float], order: list[str], reference: str,
               target_quality: float | None, target_cost_share: float | None
               ) -> tuple[float, HeldOut]:
    """The threshold meeting the target on the cross-fitted predictions. Under a quality
    target: the cheapest, but never quality traded for less than COST_TOLERANCE of the
    reference's cost (the best quality within that much of the cheapest)."""
    values = sorted({float(v) for d in order if d != reference for v in predicted[d]})
    candidates = [0.0, *values, 1.0 + 1e-9]  # from "all cheapest" to "all reference"
    outcomes = [(tau, _outcome(predicted, labels, cost, order, reference, tau))
                for tau in candidates]
    if target_cost_share is not None:
        within = [o for o in outcomes if o[1].cost_share <= target_cost_share + 1e-12]
        if not within:
            return outcomes[0]
        return max(within, key=lambda o: (o[1].quality, -o[1].cost_share))
    target = 1.0 if target_quality is None else target_quality
    good = [o for o in outcomes if o[1].quality >= target - 1e-12]
    cheapest = min(o[1].cost_share for o in good)
    near = [o for o in good if o[1].cost_share <= cheapest + COST_TOLERANCE]
    return max(near, key=lambda o: (o[1].quality, -o[1].cost_share, o[0]))


def _tune(emb: np.ndarray, labels: dict[str, np.ndarray], priors: dict[str, float],
          cost: dict[str, float], reference: str, k: int, prior_weight: float,
          target_quality: float | None, target_cost_share: float | None
          ) -> tuple[float, HeldOut]:
    """tau and its held-out outcome from the labelled calibration prompts."""
    predicted = _cross_fitted(emb, labels, priors, reference, k, prior_weight)
    return choose_tau(predicted, labels, cost, _by_cost(cost, reference), reference,
                      target_quality, target_cost_share)


async def _answers(ref: DeploymentRef, prompts: list[str], max_tokens: int, concurrency: int,
                   tick: Callable[[], None]) -> list[tuple[str, float]]:
    """(answer text, metered $) for each prompt, temperature 0."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(prompt: str) -> tuple[str, float]:
            async with sem:
                r = await client.post(f"{ref.base_url}/chat/completions", headers=ref.headers,
                                      json={"model": ref.model, "temperature": 0,
                                            "max_tokens": max_tokens,
                                            "messages": [{"role": "user", "content": prompt}]})
            if r.status_code != 200:
                raise InvalidInputError(f"calibration: {ref.name} answered {r.status_code}: "
                                        f"{r.text[:300]}")
            data = r.json()
            usage = data.get("usage") or {}
            cost = (int(usage.get("prompt_tokens", 0)) * ref.usd_per_input_token
                    + int(usage.get("completion_tokens", 0)) * ref.usd_per_output_token)
            tick()
            return data["choices"][0]["message"].get("content") or "", cost

        return list(await asyncio.gather(*(one(p) for p in prompts)))


async def calibrate(refs: Sequence[DeploymentRef], reference: str, prompts: Sequence[str],
                    embedder, *, target_quality: float | None = 0.9,
                    target_cost_share: float | None = None, max_tokens: int = 48,
                    answer_words: int = 16, k: int = 8, prior_weight: float = 4.0,
                    concurrency: int = 2, step: Callable[[str], None] | None = None
                    ) -> Calibration:
    """Ask every deployment to answer `prompts`, label the answers against the
    reference's, and choose tau for the target (quality, or cost share if given)."""
    names = [r.name for r in refs]
    if reference not in names:
        raise InvalidInputError(f"reference {reference!r} is not among the deployments "
                                f"({', '.join(names)})")
    if len(refs) < 2:
        raise InvalidInputError("routing needs at least two deployments: the reference and a "
                                "cheaper one")
    if len(prompts) < 8:
        raise InvalidInputError(f"{len(prompts)} calibration prompts are too few: give 8 or "
                                "more (80 or more for a threshold worth trusting)")
    if target_quality is not None and not 0 < target_quality <= 1:
        raise InvalidInputError(f"target quality {target_quality} must be in (0, 1]")
    if target_cost_share is not None and not 0 < target_cost_share <= 1:
        raise InvalidInputError(f"target cost share {target_cost_share} must be in (0, 1]")
    step = step or (lambda _msg: None)
    prompts = list(prompts)
    answers: dict[str, list[tuple[str, float]]] = {}
    for ref in refs:
        done = [0]

        def tick(name=ref.name, done=done):
            done[0] += 1
            if done[0] % 10 == 0 or done[0] == len(prompts):
                step(f"calibration answers from {name}: {done[0]}/{len(prompts)}")

        answers[ref.name] = await _answers(ref, prompts, max_tokens, concurrency, tick)
    step("embedding the calibration prompts")
    emb = np.asarray(embedder.encode(prompts), dtype=np.float32)
    ref_text = [a for a, _ in answers[reference]]
    labels = {n: np.array([agree(a, r, answer_words) for (a, _), r in
                           zip(answers[n], ref_text, strict=True)]) for n in names}
    cost = {n: float(np.mean([c for _, c in answers[n]])) for n in names}
    priors, sources = {}, {}
    for r in refs:
        if r.name == reference:
            priors[r.name], sources[r.name] = 1.0, "the reference"
        elif r.quality_prior is not None:
            priors[r.name], sources[r.name] = r.quality_prior, "tokenomy eval answer agreement"
        else:
            priors[r.name] = float(labels[r.name].mean())
            sources[r.name] = "calibration agreement"
    tau, held_out = _tune(emb, labels, priors, cost, reference, k, prior_weight,
                          target_quality, target_cost_share)
    return Calibration(
        reference=reference,
        deployments={n: DeploymentCalibration(usd_per_request=cost[n],
                                              labels=labels[n].tolist(), prior=priors[n],
                                              prior_source=sources[n]) for n in names},
        prompts=prompts, embeddings=np.round(emb, 5).tolist(),
        embedder=getattr(embedder, "name", type(embedder).__name__), tau=tau, k=k,
        prior_weight=prior_weight, target_quality=None if target_cost_share else
        target_quality, target_cost_share=target_cost_share, held_out=held_out,
        answer_words=answer_words, max_tokens=max_tokens,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        conditions=(f"{len(prompts)} prompts, temperature 0, max_tokens {max_tokens}; ok = "
                    f"first {answer_words} words equal to {reference}'s; held-out figures "
                    "are two-fold cross-fitted"))


def sample_prompts(dataset: str, split: str, n: int, seed: int = 0,
                   max_chars: int = 600) -> list[str]:
    """`n` first user turns of one split of a conversation dataset ('sharegpt' or a
    .jsonl), skipping empty and very long ones (the gateway's traffic, not documents)."""
    from tokenomy.evaluate.data import conversations

    out = []
    for conv in conversations(dataset, split, n * 3, seed):
        text = conv.first_prompt
        if text and 8 <= len(text) <= max_chars:
            out.append(text)
        if len(out) == n:
            break
    return out


__all__ = ["Calibration", "Decision", "DeploymentRef", "Router", "RouterSettings",
           "calibrate", "sample_prompts"]
