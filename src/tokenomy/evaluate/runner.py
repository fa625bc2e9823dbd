"""`tokenomy.evaluate`: what quality a candidate lost against its base, measured on the
same held-out tokens and prompts. The base's reference (top-k distributions, greedy
answers) is computed once and cached by content hash, so each further candidate costs
one pass over the tokens and prompts."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from tokenomy.compress.artifact import dir_size, read_manifest
from tokenomy.errors import InvalidInputError
from tokenomy.evaluate import metrics
from tokenomy.evaluate.reference import BaseReference, build_reference
from tokenomy.numbers import finite
from tokenomy.sources import ModelSource, resolve_source


class EvalConfig(BaseModel):
    """What to measure on. Round-trips to JSON; part of every cache key."""

    dataset: str = "sharegpt"  # 'sharegpt', 'shakespeare[:PLAY]', a .jsonl or .txt file
    windows: finite(ge=1, le=100_000, integer=True) = 16  # for perplexity / KLD / top-1
    window_tokens: finite(ge=8, le=1_000_000, integer=True) = 512
    prompts: finite(ge=1, le=100_000, integer=True) = 16  # greedy-answer agreement
    answer_tokens: finite(ge=1, le=100_000, integer=True) = 16  # must match this many
    max_new_tokens: finite(ge=1, le=100_000, integer=True) = 64  # generated per prompt
    max_prompt_tokens: finite(ge=1, le=1_000_000, integer=True) = 384
    topk: finite(ge=1, le=1_000_000, integer=True) = 128
    seed: finite(ge=0, le=2**32 - 1, integer=True) = 0
    lm_eval_tasks: list[str] = []  # optional lm-evaluation-harness tasks (local task files)
    lm_eval_limit: finite(ge=1, le=10_000_000, integer=True) | None = 100  # docs per task

    def check(self) -> None:
        """What can be checked before any model loads: the ranges (again: a config built
        with model_construct skips them), the dataset, the lm-eval task names."""
        from tokenomy.evaluate.data import check_dataset
        from tokenomy.evaluate.lm_eval_tasks import check_tasks

        for name in ("windows", "window_tokens", "prompts", "answer_tokens", "max_new_tokens",
                     "topk"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.answer_tokens > self.max_new_tokens:
            raise InvalidInputError(f"answer_tokens ({self.answer_tokens}) cannot exceed "
                                    f"max_new_tokens ({self.max_new_tokens}).")
        check_dataset(self.dataset)
        check_tasks(self.lm_eval_tasks)


class ModelQuality(BaseModel):
    path: str
    engine: str
    perplexity: float
    degenerate_answers: int
    disk_bytes: int
    loaded_bytes: int  # weights as the evaluating engine holds them in memory
    seconds: float


class EvalResult(BaseModel):
    schema_version: int = 1
    config: EvalConfig
    tokens: int
    base: ModelQuality
    candidate: ModelQuality
    perplexity_change_pct: float
    kld_mean: float
    kld_p99: float
    top1_agreement: float
    answer_agreement: float  # share of prompts answered identically for answer_tokens
    answer_prefix_tokens: float  # mean tokens generated identically before diverging
    answers: int
    verdict: str
    sample_answers: list[dict]  # every (prompt, base, candidate), for a human look
    lm_eval: dict[str, dict[str, dict]] = {}  # model ('base'|'candidate') -> task -> scores
    measured: bool = True
    conditions: str


def candidate_source(path: str | Path) -> ModelSource:
    """A candidate: a tokenomy output directory (its GGUF or checkpoint), an HF
    directory, or a .gguf file."""
    path = Path(path)
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest and manifest.output_format == "gguf":
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return ModelSource("gguf", ggufs[0].resolve(), ggufs[0].stem)
    return resolve_source(path)


def _scorer(source: ModelSource, ctx: int):
    from tokenomy.evaluate.scorers import LlamaCppScorer, TransformersScorer

    if source.kind == "gguf":
        return LlamaCppScorer(source.path, n_ctx=ctx)
    if source.kind == "openvino":
        from tokenomy.evaluate.ov_scorer import OpenVINOScorer

        return OpenVINOScorer(source.path)
    return TransformersScorer(source)


def _disk(source: ModelSource) -> int:
    return source.path.stat().st_size if source.kind == "gguf" else dir_size(source.path)


def _same_architecture(base: ModelSource, cand: ModelSource) -> None:
    """eval compares a compressed (or distilled) model with the model it came from: a
    candidate of another architecture is named as such, not judged on its KLD."""
    from tokenomy.catalog import default_catalog
    from tokenomy.errors import TokenomyError
    from tokenomy.plan.workload import resolve_model

    try:
        specs = [resolve_model(src.path, default_catalog()) for src in (base, cand)]
    except TokenomyError:
        return  # an architecture we cannot read here: the vocabulary check below remains
    shape = [(s.hidden_size, s.attention.num_heads, s.vocab_size) for s in specs]
    if shape[0] != shape[1]:
        raise InvalidInputError(
            f"{cand.path.name} is a different architecture from the base {base.path.name} "
            f"(hidden size, heads, vocabulary {shape[1]} vs {shape[0]}): eval measures what a "
            "model lost against the one it was made from; pass that one with --base")


def evaluate(candidate: str | Path, base: str | Path | None = None,
             config: EvalConfig | None = None, step=None) -> EvalResult:
    """Measure `candidate` against `base` (default: the embedded SmolLM2-135M-Instruct)."""
    config = config or EvalConfig()
    config.check()
    step = step or (lambda _msg: None)
    cand_src = candidate_source(candidate)
    base_src = resolve_source(base)
    if config.lm_eval_tasks and cand_src.kind != "hf":  # before the evaluation, not after
        raise InvalidInputError("--lm-eval runs transformers checkpoints, not GGUF files or "
                                f"OpenVINO IR: {cand_src.path.name} is one; drop --lm-eval.")
    _same_architecture(base_src, cand_src)  # named before any verdict, and before the work
    ref: BaseReference = build_reference(base_src, config, step)
    n_ctx = max(config.window_tokens, config.max_prompt_tokens + config.max_new_tokens + 8)
    step(f"loading candidate {cand_src.path.name}")
    start = time.perf_counter()
    scorer = _scorer(cand_src, n_ctx)
    if getattr(scorer, "n_vocab", ref.vocab_size) < ref.vocab_size:
        raise InvalidInputError(
            f"candidate vocabulary ({scorer.n_vocab}) differs from the base's "
            f"({ref.vocab_size}); evaluate a candidate made from this base."
        )
    scores = []
    for i, window in enumerate(ref.windows):
        step(f"candidate window {i + 1}/{len(ref.windows)}")
        logp = scorer.window_logp(window)[:, : ref.vocab_size]
        scores.append(metrics.compare(ref.window_refs[i], logp, window[1:]))
    step(f"candidate: {len(ref.prompt_ids)} greedy answers")
    answers = scorer.greedy_many(ref.prompt_ids, config.max_new_tokens, ref.eos_id)
    seconds = time.perf_counter() - start
    result = _result(config, ref, cand_src, scorer, scores, answers, seconds)
    if config.lm_eval_tasks:
        result.lm_eval = _lm_eval(config, base_src, cand_src, step)
    return result


def _lm_eval(config: EvalConfig, base: ModelSource, cand: ModelSource, step) -> dict:
    from tokenomy.evaluate.lm_eval_tasks import run_lm_eval
    from tokenomy.sources import materialize_hf

    if cand.kind != "hf":
        raise InvalidInputError("--lm-eval runs transformers checkpoints, not GGUF files or "
                                "OpenVINO IR.")
    out = {}
    for label, source in (("base", materialize_hf(base)), ("candidate", cand)):
        step(f"lm-eval {', '.join(config.lm_eval_tasks)} on the {label}")
        out[label] = run_lm_eval(source.path, config.lm_eval_tasks, config.lm_eval_limit)
    return out


def _result(config, ref, cand_src, scorer, scores, answers, seconds) -> EvalResult:
    nll = np.concatenate([s.nll for s in scores])
    kld = np.concatenate([s.kld for s in scores])
    top1 = np.concatenate([s.top1_match for s in scores])
    texts = [ref.decode(a) for a in answers]
    degenerate = sum(metrics.degenerate(t) for t in texts)
    agree = [metrics.answers_agree(b, c, config.answer_tokens)
             for b, c in zip(ref.answers, answers, strict=True)]
    ppl = metrics.perplexity(nll)
    verdict = metrics.verdict(float(kld.mean()), degenerate, ref.degenerate, len(answers))
    return EvalResult(
        config=config,
        tokens=len(nll),
        base=ref.quality,
        candidate=ModelQuality(path=str(cand_src.path), engine=scorer.engine, perplexity=ppl,
                               degenerate_answers=degenerate, disk_bytes=_disk(cand_src),
                               loaded_bytes=scorer.loaded_bytes, seconds=round(seconds, 2)),
        perplexity_change_pct=(ppl / ref.quality.perplexity - 1) * 100,
        kld_mean=float(kld.mean()),
        kld_p99=float(np.percentile(kld, 99)),
        top1_agreement=float(top1.mean()),
        answer_agreement=float(np.mean(agree)),
        answer_prefix_tokens=float(np.mean([metrics.common_prefix(b, c) for b, c in
                                            zip(ref.answers, answers, strict=True)])),
        answers=len(answers),
        verdict=verdict,
        sample_answers=[
            {"prompt": ref.prompt_texts[i][-200:], "base": ref.decode(ref.answers[i]),
             "candidate": texts[i]}
            for i in range(len(answers))
        ],
        conditions=(f"{len(nll)} held-out tokens of {config.dataset} ({config.windows} windows "
                    f"x {config.window_tokens}), {len(answers)} greedy answers x "
                    f"{config.max_new_tokens} tokens, seed {config.seed}; base via "
                    f"{ref.quality.engine}, candidate via {scorer.engine}, CPU"),
    )


def config_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
