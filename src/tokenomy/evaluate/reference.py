"""The base model's reference on the evaluation tokens and prompts, computed once with
transformers and cached by content hash (base model bytes + evaluation config)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenomy.errors import InvalidInputError
from tokenomy.evaluate import metrics
from tokenomy.evaluate.data import plain_text
from tokenomy.evaluate.prompts import answer_prompts, evaluation_texts
from tokenomy.home import cache_dir
from tokenomy.sources import ModelSource, content_hash, materialize_hf

CACHE_VERSION = 2


@dataclass
class BaseReference:
    windows: np.ndarray  # [W, T] token ids
    window_refs: list[metrics.Reference]
    prompt_ids: list[list[int]]
    prompt_texts: list[str]
    answers: list[list[int]]
    eos_id: int
    vocab_size: int
    degenerate: int
    quality: object  # runner.ModelQuality of the base
    tokenizer: object = field(repr=False, default=None)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _token_windows(tokenizer, config) -> np.ndarray:
    need = config.windows * config.window_tokens
    if config.dataset.startswith("shakespeare") or config.dataset.endswith(".txt"):
        ids = tokenizer(plain_text(config.dataset), add_special_tokens=False).input_ids
    else:
        ids = []
        for text in evaluation_texts(tokenizer, config.dataset, config.windows * 8, config.seed):
            ids.extend(tokenizer(text, add_special_tokens=False).input_ids)
            if len(ids) >= need:
                break
    if len(ids) < need:
        raise InvalidInputError(
            f"{config.dataset} gives {len(ids)} tokens, fewer than the {need} asked for "
            f"({config.windows} windows x {config.window_tokens}); ask for fewer windows."
        )
    return np.asarray(ids[:need], dtype=np.int64).reshape(config.windows, config.window_tokens)


def _prompts(tokenizer, config) -> tuple[list[list[int]], list[str]]:
    source = config.dataset if config.dataset.endswith(".jsonl") else "sharegpt"
    ids, texts = [], []
    for text in answer_prompts(tokenizer, source, config.prompts * 4, config.seed):
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        if len(tokens) <= config.max_prompt_tokens:
            ids.append(tokens)
            texts.append(text)
        if len(ids) == config.prompts:
            break
    if config.prompts and not ids:  # agreement over no answers would be NaN, not a figure
        from tokenomy.errors import InvalidInputError

        raise InvalidInputError(
            f"no answer prompt of {source} fits in --max-prompt-tokens "
            f"{config.max_prompt_tokens} with this tokenizer: raise it, or give a dataset with "
            "shorter prompts.")
    return ids, texts


def _cache_path(base: ModelSource, config) -> Path:
    fields = config.model_dump(exclude={"answer_tokens"})
    key = json.dumps([CACHE_VERSION, content_hash(base), fields], sort_keys=True)
    return cache_dir("references") / hashlib.sha256(key.encode()).hexdigest()[:32]


def build_reference(base: ModelSource, config, step) -> BaseReference:
    from transformers import AutoTokenizer

    from tokenomy.evaluate.runner import ModelQuality

    hf = materialize_hf(base)
    path = _cache_path(base, config)
    if (path / "meta.json").is_file():
        step("base reference: cached")
        tokenizer = AutoTokenizer.from_pretrained(hf.path)
        return _load(path, tokenizer, ModelQuality)
    from tokenomy.evaluate.scorers import TransformersScorer

    step(f"base reference: loading {base.path.name}")
    start = time.perf_counter()
    scorer = TransformersScorer(hf)
    tokenizer = scorer.tokenizer
    windows = _token_windows(tokenizer, config)
    refs = []
    for i, window in enumerate(windows):
        step(f"base window {i + 1}/{len(windows)}")
        refs.append(metrics.reference_from_logp(scorer.window_logp(window), window[1:],
                                                config.topk))
    prompt_ids, prompt_texts = _prompts(tokenizer, config)
    eos = tokenizer.eos_token_id
    step(f"base: {len(prompt_ids)} greedy answers")
    answers = scorer.greedy_many(prompt_ids, config.max_new_tokens, eos)
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    quality = ModelQuality(
        path=str(base.path), engine=scorer.engine,
        perplexity=metrics.perplexity(np.concatenate([r.nll for r in refs])),
        degenerate_answers=sum(metrics.degenerate(t) for t in texts),
        disk_bytes=base.size_bytes, loaded_bytes=scorer.loaded_bytes,
        seconds=round(time.perf_counter() - start, 2),
    )
    ref = BaseReference(windows, refs, prompt_ids, prompt_texts, answers, eos,
                        int(scorer.model.config.vocab_size), quality.degenerate_answers,
                        quality, tokenizer)
    _save(path, ref)
    return ref


def _save(path: Path, ref: BaseReference) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        partial / "arrays.npz", windows=ref.windows,
        nll=np.stack([r.nll for r in ref.window_refs]),
        topk_ids=np.stack([r.topk_ids for r in ref.window_refs]),
        topk_logp=np.stack([r.topk_logp for r in ref.window_refs]),
        argmax=np.stack([r.argmax for r in ref.window_refs]),
    )
    meta = {"prompt_ids": ref.prompt_ids, "prompt_texts": ref.prompt_texts,
            "answers": ref.answers, "eos_id": ref.eos_id, "vocab_size": ref.vocab_size,
            "degenerate": ref.degenerate, "quality": ref.quality.model_dump()}
    (partial / "meta.json").write_text(json.dumps(meta))
    partial.rename(path)


def _load(path: Path, tokenizer, quality_cls) -> BaseReference:
    arrays = np.load(path / "arrays.npz")
    meta = json.loads((path / "meta.json").read_text())
    refs = [
        metrics.Reference(arrays["nll"][i], arrays["topk_ids"][i], arrays["topk_logp"][i],
                          arrays["argmax"][i])
        for i in range(len(arrays["windows"]))
    ]
    # judged again on load, so the base is held to the same detector as the candidate
    degenerate = sum(metrics.degenerate(tokenizer.decode(a, skip_special_tokens=True))
                     for a in meta["answers"])
    quality = quality_cls(**{**meta["quality"], "degenerate_answers": degenerate})
    return BaseReference(arrays["windows"], refs, meta["prompt_ids"], meta["prompt_texts"],
                         meta["answers"], meta["eos_id"], meta["vocab_size"], degenerate,
                         quality, tokenizer)
