"""`tokenomy.sensitivity`: which tensors lose quality when quantized, and how much.

The estimate is compress/auto's table (Fisher-weighted exact round-trip error, cached by
content hash); a sample of tensors is then quantized alone and measured on held-out
windows, and the rank correlation of estimate vs measurement says how far to trust it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tokenomy.compress.auto.table import SensitivityConfig, Table, sensitivity_table
from tokenomy.errors import InvalidInputError
from tokenomy.sensitivity.swaps import measure_swaps, pick, spearman
from tokenomy.sources import resolve_source

__all__ = ["SensitivityConfig", "SensitivityResult", "sensitivity"]


class Swap(BaseModel):
    tensor: str
    type: str
    estimated_kld: float
    measured_kld: float


class SensitivityResult(BaseModel):
    model: str
    table: Table
    swaps: list[Swap]
    swap_type: str
    spearman: float | None  # estimate vs measured over the swaps
    conditions: str

    def top(self, qtype: str, n: int = 10):
        return sorted(self.table.rows, key=lambda r: -r.kld.get(qtype, 0.0))[:n]


def sensitivity(model: str | Path | None = None, config: SensitivityConfig | None = None,
                *, swaps: int = 8, swap_type: str = "Q4_0", eval_windows: int = 4,
                step=None, imatrix: str | Path | None = None,
                save_imatrix: str | Path | None = None) -> SensitivityResult:
    """The sensitivity table of `model` (a GGUF or HF directory; default: the embedded
    SmolLM2), confirmed by `swaps` single-tensor swaps to `swap_type`. `imatrix`: a
    llama-imatrix file (GGUF or .dat) weighting the round trips instead of the computed
    one; `save_imatrix`: write the importance matrix used, in llama.cpp's format (.dat:
    legacy, otherwise GGUF), for llama-quantize --imatrix."""
    from tokenomy.compress.auto.loop import eval_config

    config = config or SensitivityConfig()
    if swap_type not in config.types:
        raise InvalidInputError(f"--swap-type {swap_type} is not among the types "
                                f"{', '.join(config.types)}.")
    if swaps < 0:
        raise InvalidInputError("--swaps must be 0 or more.")
    source = resolve_source(model)
    if source.kind == "openvino":
        raise InvalidInputError(f"{source.path} is an OpenVINO IR, compressed already; "
                                "pass the model it came from.")
    user = _user_imatrix(imatrix, source, config)
    if save_imatrix is not None and Path(save_imatrix).exists():
        raise InvalidInputError(f"--save-imatrix {save_imatrix} already exists; tokenomy "
                                "never overwrites.")
    table, importance = sensitivity_table(source, config, step, user)
    if save_imatrix is not None:
        _save(save_imatrix, importance, config, user)
    measured: list[Swap] = []
    ev = eval_config(config.dataset, eval_windows, config.window_tokens, config.seed)
    if swaps:
        names = pick(table, swap_type, swaps)
        got = measure_swaps(source, names, swap_type, importance if config.imatrix else None,
                            ev, step)
        measured = [Swap(tensor=n, type=swap_type, estimated_kld=table.row(n).kld[swap_type],
                         measured_kld=got[n]) for n in names]
    rho = spearman([s.estimated_kld for s in measured], [s.measured_kld for s in measured])
    return SensitivityResult(
        model=str(source.path), table=table, swaps=measured, swap_type=swap_type,
        spearman=None if rho != rho else rho,
        conditions=(f"estimate: diagonal Fisher (sampled labels) on {table.tokens} calibration "
                    f"tokens of {config.dataset} ({config.windows} x {config.window_tokens}, "
                    f"seed {config.seed}), {'imatrix-weighted' if config.imatrix else 'plain'} "
                    f"round trips; swaps: transformers on {ev.windows} held-out windows x "
                    f"{ev.window_tokens} tokens, CPU"),
    )


def _user_imatrix(path, source, config: SensitivityConfig):
    from tokenomy.compress.auto.imatrix_file import load_for, read_imatrix

    if path is None:
        return None
    if not config.imatrix:
        raise InvalidInputError("--imatrix weights the round trips; drop --no-imatrix.")
    # a GGUF is checked now; a Hugging Face model once loaded (its GGUF names, in the table)
    return load_for(path, source.path) if source.kind == "gguf" else read_imatrix(path)


def _save(path, importance, config: SensitivityConfig, user) -> None:
    from tokenomy.compress.auto.imatrix_file import Imatrix, write_imatrix

    if user is None:
        user = Imatrix(importance, datasets=[config.dataset], chunks=config.windows,
                       chunk_size=config.window_tokens)
    write_imatrix(path, user)
