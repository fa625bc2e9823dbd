"""The sensitivity table: for every quantizable tensor and every candidate type, the bytes
it takes and the estimated mean KLD it adds, ``sum(F * e^2) / 2 / tokens`` with `e` the
exact error of that type's own round trip (importance-weighted when ``imatrix``). Cached
under $TOKENOMY_HOME/sensitivity by content hash of the model and this config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from tokenomy.compress.auto import blocks
from tokenomy.errors import InvalidInputError
from tokenomy.home import cache_dir
from tokenomy.numbers import finite
from tokenomy.sources import ModelSource, content_hash

CACHE_VERSION = 2  # 2: Q8_0 round trips are plain RTN (llama.cpp gives Q8_0 no imatrix)


class SensitivityConfig(BaseModel):
    """Calibration for the estimate. Round-trips to JSON; the cache key."""

    dataset: str = "sharegpt"  # calibration split of 'sharegpt' or a .jsonl file
    windows: finite(ge=1, le=10_000, integer=True) = 16
    window_tokens: finite(ge=8, le=100_000, integer=True) = 256
    seed: finite(ge=0, le=2**32 - 1, integer=True) = 0
    imatrix: bool = True  # the block types quantize with the importance matrix
    types: list[str] = list(blocks.TYPES)


class TensorRow(BaseModel):
    name: str  # GGUF tensor name
    shape: tuple[int, int]  # [rows, cols] (HF [out, in]; GGUF ne reversed)
    kld: dict[str, float]  # type -> estimated added mean KLD per token
    bytes: dict[str, int]  # type -> bytes in the file


class Table(BaseModel):
    model_sha256: str
    config: SensitivityConfig
    tokens: int
    rows: list[TensorRow]

    def row(self, name: str) -> TensorRow:
        return next(r for r in self.rows if r.name == name)


def _key(source: ModelSource, config: SensitivityConfig, imatrix=None) -> tuple[str, str]:
    digest = content_hash(source)
    parts = [CACHE_VERSION, digest, config.model_dump()]
    if imatrix is not None:
        parts.append(imatrix.sha256)  # round trips weighted by the user's file
    text = json.dumps(parts, sort_keys=True)
    return digest, hashlib.sha256(text.encode()).hexdigest()[:32]


def check_types(types: list[str]) -> None:
    bad = [t for t in types if t not in blocks.TYPES]
    if bad or not types:
        raise InvalidInputError(f"unknown type(s) {bad or types}: choose from "
                                f"{', '.join(blocks.TYPES)}.")


def sensitivity_table(source: ModelSource, config: SensitivityConfig | None = None,
                      step=None, imatrix=None) -> tuple[Table, dict[str, np.ndarray]]:
    """(table, importance by GGUF name) for `source`; computed once per model + config.
    `imatrix`: an `imatrix_file.Imatrix` (a user's llama-imatrix file) used instead of the
    activations of the calibration pass (which still gives the Fisher)."""
    config = config or SensitivityConfig()
    check_types(config.types)
    step = step or (lambda _msg: None)
    digest, key = _key(source, config, imatrix)
    path = cache_dir("sensitivity") / key
    if (path / "table.json").is_file():
        step("sensitivity: cached")
        return _load(path)
    table, importance = _compute(source, config, digest, step, imatrix)
    partial = path.with_name(path.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    np.savez(partial / "imatrix.npz", **importance)
    (partial / "table.json").write_text(table.model_dump_json())
    partial.rename(path)
    return table, importance


def _load(path: Path) -> tuple[Table, dict[str, np.ndarray]]:
    table = Table.model_validate_json((path / "table.json").read_text())
    with np.load(path / "imatrix.npz") as z:
        return table, {k: z[k] for k in z.files}


def _compute(source: ModelSource, config: SensitivityConfig, digest: str, step, imatrix):
    import torch

    from tokenomy.capability import usable_cores
    from tokenomy.compress.auto.stats import calibration_windows, collect
    from tokenomy.sources import load_transformers, materialize_hf

    torch.set_num_threads(usable_cores())
    step("loading the model into transformers")
    model, tokenizer = load_transformers(materialize_hf(source))
    windows = calibration_windows(tokenizer, config.dataset, config.windows,
                                  config.window_tokens, config.seed)
    stats = collect(model, windows, config.seed, step)
    del model
    if imatrix is not None:
        from tokenomy.compress.auto.imatrix_file import check_fits

        check_fits(imatrix, {n: w.shape[1] for n, w in stats.weights.items()},
                   source.path.name)
        stats.importance = imatrix.importance
    rows = []
    for i, (name, weight) in enumerate(stats.weights.items()):
        step(f"round trips: tensor {i + 1}/{len(stats.weights)} ({name})")
        imp = stats.importance.get(name) if config.imatrix else None
        rows.append(tensor_row(name, weight, stats.fisher[name], imp, config.types,
                               stats.tokens))
    table = Table(model_sha256=digest, config=config, tokens=stats.tokens, rows=rows)
    return table, stats.importance


def tensor_row(name: str, weight: np.ndarray, fisher: np.ndarray, importance, types,
               tokens: int) -> TensorRow:
    kld, size = {}, {}
    for qtype in types:
        if not blocks.fits(qtype, weight.shape[1]):
            continue
        err = blocks.round_trip(weight, qtype, importance if qtype != "F16" else None) - weight
        kld[qtype] = float((fisher * err * err).sum(dtype=np.float64) / 2 / tokens)
        size[qtype] = blocks.tensor_bytes(qtype, weight.shape)
    return TensorRow(name=name, shape=tuple(weight.shape), kld=kld, bytes=size)
