"""`train`: recover a student by offline logit distillation. Reads top to bottom: config,
checks (vocabulary, data, disk and memory: before anything is written), the teacher's
top-k cached once, then the loop (loop.py), then the student saved with its manifest."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tokenomy.distill import manifest as M
from tokenomy.distill.cache import TeacherCache, cache_bytes, check_resources
from tokenomy.distill.data import token_windows
from tokenomy.distill.layers import check_decoder
from tokenomy.errors import InvalidInputError
from tokenomy.numbers import finite
from tokenomy.sources import content_hash, load_transformers, materialize_hf, resolve_source

CONFIG = "distill_config.json"
MAX_TOKENS = 2_000_000_000


class TrainConfig(BaseModel):
    """One training run; saved beside the student (and used again by --resume)."""

    objective: Literal["kd", "ce"] = "kd"
    tokens: finite(ge=1, le=MAX_TOKENS, integer=True) | None = None
    minutes: finite(gt=0, le=60 * 24 * 30) | None = None
    dataset: str = "sharegpt"
    window_tokens: finite(ge=8, le=100_000, integer=True) = 256
    batch_windows: finite(ge=1, le=10_000, integer=True) = 4  # windows per optimizer step
    topk: finite(ge=1, le=1_000_000, integer=True) = 32
    lr: finite(gt=0, le=1) = 1e-4
    weight_decay: finite(ge=0, le=1) = 0.0
    warmup_share: finite(ge=0, lt=1) = 0.05
    min_lr_share: finite(ge=0, le=1) = 0.1  # cosine decays to this share of lr
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (AMX/AVX-512 CPUs, GPUs)
    seed: finite(ge=0, le=2**32 - 1, integer=True) = 0
    checkpoint_minutes: finite(gt=0, le=10_000) = 5.0
    checkpoint_steps: finite(ge=1, le=10**9, integer=True) | None = None
    keep_state: bool = False  # keep checkpoint/ and teacher_cache/ after a finished run

    def check(self) -> None:
        if self.tokens is None and self.minutes is None:
            raise InvalidInputError("give --tokens N or --minutes M (or both) to bound the run.")

    @property
    def step_tokens(self) -> int:
        return self.batch_windows * self.window_tokens


class Run:
    """What the loop needs, prepared and checked."""

    def __init__(self, config, out, student, tokenizer, teacher_src, teacher_hash, windows,
                 total_steps, manifest):
        self.config, self.out, self.student, self.tokenizer = config, out, student, tokenizer
        self.teacher_src, self.teacher_hash, self.windows = teacher_src, teacher_hash, windows
        self.total_steps, self.manifest = total_steps, manifest


def train(student: str | Path, teacher: str | Path | None, output: str | Path,
          config: TrainConfig | None = None, *, resume: bool = False, step=None,
          callback=None) -> M.DistillManifest:
    """Train `student` towards `teacher` (default: the teacher its manifest names) into the
    new directory `output`; `resume` continues the interrupted run there. `callback(step,
    tokens, model)` runs after every optimizer step (benchmarks measure along the way)."""
    from tokenomy.distill.loop import run_loop

    step = step or (lambda _msg: None)
    output = Path(output)
    config = _config(config, output, resume)
    run = prepare(student, teacher, output, config, step)
    output.mkdir(parents=True, exist_ok=True)
    (output / CONFIG).write_text(json.dumps({"student": str(student), "teacher":
                                             str(run.teacher_src.path),
                                             "config": config.model_dump()}, indent=2))
    if config.objective == "kd":
        _fill_cache(run, step)
    start = time.perf_counter()
    curve, tokens = run_loop(run, step, callback)
    return _finish(run, curve, tokens, time.perf_counter() - start, step)


def _config(config: TrainConfig | None, output: Path, resume: bool) -> TrainConfig:
    if resume:
        saved = output / CONFIG
        if not (output / "checkpoint" / "state.pt").is_file() or not saved.is_file():
            raise InvalidInputError(f"nothing to resume in {output}: no checkpoint there "
                                    "(run without --resume to start).")
        return TrainConfig.model_validate(json.loads(saved.read_text())["config"])
    if output.exists():
        raise InvalidInputError(f"output {output} exists; distill never overwrites: choose a "
                                "new directory, or --resume an interrupted run there.")
    config = config or TrainConfig()
    config.check()
    return config


def prepare(student, teacher, output: Path, config: TrainConfig, step) -> Run:
    """Everything checked before anything is written: models, vocabularies, data, disk and
    memory. Raises InvalidInputError with one clear line on each."""
    from transformers import AutoConfig, AutoTokenizer

    student_src = materialize_hf(resolve_source(student))
    prior = M.read(student_src.path)
    if teacher is None:
        if prior is None:
            raise InvalidInputError("give --teacher MODEL: the student has no distill manifest "
                                    "naming its teacher.")
        teacher = prior.teacher.path
    given = resolve_source(teacher)
    teacher_src = materialize_hf(given)
    for src in (student_src, teacher_src):
        check_decoder(src.path)
    vocab = [AutoConfig.from_pretrained(s.path).vocab_size for s in (student_src, teacher_src)]
    tokenizers = [AutoTokenizer.from_pretrained(s.path) for s in (student_src, teacher_src)]
    if vocab[0] != vocab[1] or tokenizers[0].get_vocab() != tokenizers[1].get_vocab():
        raise InvalidInputError(
            f"the student's vocabulary ({vocab[0]} tokens) differs from the teacher's "
            f"({vocab[1]}): logit distillation needs the same tokenizer; distill a student "
            "made from this teacher (tokenomy distill prune).")
    step(f"loading {student_src.name}")
    model, tokenizer = load_transformers(student_src)
    if config.tokens is None:  # --minutes alone: the schedule's length from a measured step
        config.tokens = _planned_tokens(model, config, teacher_src.size_bytes
                                        / student_src.size_bytes)
    step("tokenizing the training text")
    windows = token_windows(tokenizers[1], config.dataset,
                            math.ceil(config.tokens / config.window_tokens),
                            config.window_tokens, config.seed)
    _check_resources(output, config, student_src, teacher_src, len(windows), vocab[0])
    total = math.ceil(config.tokens / config.step_tokens)
    manifest = prior or M.DistillManifest(
        created_at="", layers=model.config.num_hidden_layers,
        teacher=M.Teacher(path=str(teacher_src.path), sha256="",
                          layers=check_decoder(teacher_src.path),
                          gguf=str(given.path) if given.kind == "gguf" else None))
    return Run(config, output, model, tokenizer, teacher_src, content_hash(teacher_src),
               windows, total, manifest)


def _planned_tokens(model, config: TrainConfig, teacher_ratio: float) -> int:
    """Tokens that fit in --minutes, from one timed forward+backward of the student on a
    window (plus, for kd, the teacher's forward on it: ~1/3 of a step per parameter)."""
    import torch

    from tokenomy.distill.cache import autocast

    ids = torch.randint(0, model.config.vocab_size, (1, config.window_tokens))
    start = time.perf_counter()
    with autocast(config.precision):
        logits = model(ids, use_cache=False).logits
    logits.float().mean().backward()
    model.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - start) * (1 + (teacher_ratio / 3 if config.objective ==
                                                    "kd" else 0))
    fit = min(int(config.minutes * 60 / seconds) * config.window_tokens, MAX_TOKENS)
    # whole optimizer steps: the schedule's ceil(tokens / step) must not run past the plan
    return max(config.step_tokens, fit - fit % config.step_tokens)


def _check_resources(output, config, student_src, teacher_src, windows, vocab) -> None:
    params = [s.size_bytes / 4 for s in (student_src, teacher_src)]  # fp32 on disk
    cache = cache_bytes(windows, config.window_tokens, config.topk) \
        if config.objective == "kd" else 0
    model_bytes = params[0] * 4
    disk = cache + model_bytes * 3 * 2 + model_bytes  # checkpoint (x2 while replaced) + student
    activations = config.window_tokens * (vocab * 4 * 4 + 2**14 * 4 * 64)
    ram = max(params[1] * 4, params[0] * 16) + activations
    what = (f"the teacher cache ({windows * (config.window_tokens - 1):,} tokens x top-"
            f"{config.topk}: {cache / 2**30:.2f} GiB) and checkpoints")
    check_resources(output, int(disk), int(ram), what)


def _fill_cache(run: Run, step) -> None:
    teacher, _ = load_transformers(run.teacher_src)
    key = {"teacher": run.teacher_hash, "dataset": run.config.dataset, "seed": run.config.seed,
           "window_tokens": run.config.window_tokens, "topk": run.config.topk,
           "windows": len(run.windows)}
    run.cache = TeacherCache(run.out / "teacher_cache", len(run.windows),
                             run.config.window_tokens, run.config.topk, key)
    run.cache.fill(teacher, run.windows, run.config.precision, step)
    del teacher


def _finish(run: Run, curve, tokens: int, seconds: float, step) -> M.DistillManifest:
    step("writing the student")
    model = run.student
    model.save_pretrained(run.out)
    run.tokenizer.save_pretrained(run.out)
    m = run.manifest
    m.teacher.path, m.teacher.sha256 = str(run.teacher_src.path), run.teacher_hash
    m.tokens_seen += tokens
    m.objective = run.config.objective
    m.runs.append(M.TrainRun(objective=run.config.objective, tokens=tokens,
                             seconds=round(seconds, 1), dataset=run.config.dataset,
                             config=run.config.model_dump(), loss_curve=curve))
    M.write(run.out, m)
    if not run.config.keep_state:
        for sub in ("checkpoint", "teacher_cache"):
            shutil.rmtree(run.out / sub, ignore_errors=True)
    return m
