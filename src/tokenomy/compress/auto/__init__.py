"""`--scheme auto` on GGUF: per-tensor llama.cpp block types chosen for the fewest bytes
under a mean-KLD budget (or the least KLD within a size), from a Fisher-weighted
sensitivity table, written by tokenomy itself, measured on the held-out split; and the
`+imatrix` variants of the uniform block-type schemes.

Pieces: `blocks` (the types in numpy, importance-weighted), `stats` (Fisher and
activations in one calibration pass), `table` (the cached sensitivity table), `allocate`
(the greedy frontier), `writer` (the mixed GGUF), `loop` (measure and upgrade).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from tokenomy.compress.auto import blocks
from tokenomy.compress.auto.allocate import fill, frontier
from tokenomy.compress.auto.budget import KldBudget, check_budget, first_point
from tokenomy.compress.auto.loop import Meter, close_loop, eval_config, measure_once
from tokenomy.compress.auto.table import SensitivityConfig, sensitivity_table
from tokenomy.compress.auto.writer import other_bytes, source_tensors, write_mixed
from tokenomy.errors import InvalidInputError
from tokenomy.sources import ModelSource

__all__ = ["SensitivityConfig", "auto_gguf", "check_budget", "imatrix_gguf", "sensitivity_table"]


def _need_gguf(source: ModelSource, what: str) -> None:
    if source.kind != "gguf":
        raise InvalidInputError(
            f"{what} writes a GGUF from a GGUF source, and {source.path} is not one. "
            "Convert it first with llama.cpp's convert_hf_to_gguf.py (at F16 or F32), then "
            "pass the .gguf file.")


_GGUF_LINEAR = re.compile(r"(token_embd|output|blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down)))"
                          r"\.weight")


def _need_quantizable(source: ModelSource) -> None:
    from gguf import GGUFReader

    try:
        tensors = GGUFReader(str(source.path)).tensors
    except (ValueError, OSError) as e:
        raise InvalidInputError(f"{source.path} is not a readable GGUF file ({e}).") from e
    ok = [t.name for t in tensors if _GGUF_LINEAR.fullmatch(t.name) and len(t.shape) == 2
          and int(t.shape[0]) % blocks.BLOCK == 0]
    if not ok:
        raise InvalidInputError(
            f"{source.path.name} has no quantizable layers: no attention, FFN, embedding or "
            f"output weight with rows a multiple of {blocks.BLOCK} (llama.cpp's block size); "
            "nothing was written.")


def check_request(scheme: str, source: ModelSource, budget: KldBudget,
                  size_mb: float | None) -> None:
    """What can be refused before any work: the source kind and the budget."""
    _need_gguf(source, f"--scheme {scheme}")
    _need_quantizable(source)
    if scheme == "auto":
        check_budget(scheme, budget, size_mb)


def auto_gguf(source: ModelSource, out: Path, *, max_kld: float | None,
              size_mb: float | None, config: SensitivityConfig, eval_windows: int = 8,
              step=None, imatrix=None, types: list[str] | None = None,
              max_kld_p99: float | None = None) -> dict:
    """Write `out`/<name>.auto.gguf; returns the manifest's extra fields. `imatrix`: a
    user's file (`imatrix_file.Imatrix`) instead of the calibration pass's activations;
    `types`: the block types it may choose (default: all of the table's);
    `max_kld_p99`: a budget on the 99th percentile of KLD per token, met by measurement."""
    step = step or (lambda _m: None)
    budget = KldBudget(max_kld, max_kld_p99)
    check_request("auto", source, budget, size_mb)
    table, importance = sensitivity_table(source, config, step, imatrix)
    names = {r.name for r in table.rows}
    allowed = list(types or config.types)
    front = frontier(table, other_bytes(source.path, names), allowed)
    point = first_point(front, budget, None if size_mb is None else int(size_mb * 1e6))
    meter = Meter(source, eval_config(config.dataset, eval_windows, config.window_tokens,
                                      config.seed), step)
    target = out / f"{source.path.stem.split('.')[0]}.auto.gguf"
    imp = importance if config.imatrix else None
    check = None
    if not budget.given:  # a size: the frontier point topped up with upgrades that fit
        step("writing the allocation and measuring it on the held-out split")
        alloc = fill(front, point, int(size_mb * 1e6))
        history = [measure_once(source, alloc, point.step, imp, meter, target)]
        check = _uniform_check(source, table, names, allowed, int(size_mb * 1e6), alloc,
                               history, imp, meter, target, step)
    else:
        try:
            history = close_loop(source, front, point, budget, imp, meter, target, step)
        except InvalidInputError as failed:  # the estimate may be wrong, not the budget
            history, check = _uniform_rescue(source, table, names, allowed, budget, imp,
                                             meter, target, step, failed)
    final = history[-1]
    types = {name: t for name, (t, _) in source_tensors(target).items()}
    return dict(
        recipe=config.model_dump_json(),
        calibration=_calibration(config, table.tokens),
        tensor_types=types,
        auto={
            "max_kld": max_kld, "max_kld_p99": max_kld_p99, "size_mb": size_mb,
            "allowed_types": allowed,
            "predicted_kld": final.point.kld, "measured_kld": final.kld.mean,
            "measured_kld_p99": final.kld.p99,
            "predicted_bytes": final.point.bytes,
            "tries": [{"bytes": h.point.bytes, "predicted_kld": h.point.kld,
                       "measured_kld": h.kld.mean, "measured_kld_p99": h.kld.p99}
                      for h in history],
            "frontier_points": len(front.points),
            "uniform_check": check,
            "measured_on": meter.conditions,
            "calibration_tokens": table.tokens,
        },
        notes=[f"estimated mean KLD {final.point.kld:.4f}, measured {final.kld.mean:.4f} "
               f"(p99 {final.kld.p99:.4f}; {meter.conditions})", *_imatrix_notes(imatrix),
               *([check["note"]] if check else [])],
        imatrix=None if imatrix is None else imatrix.provenance(),
    )


def _uniform_check(source, table, names, allowed, size, alloc, history, imp, meter,
                   target, step) -> dict | None:
    """Measure the largest uniform type that fits the size too, and keep it where it
    measures better: the estimate sums independent per-weight errors, and a model whose
    weights sit near a quantization grid (fine-tuned from quantized weights) breaks that.
    Appends the winner to `history` when it is the uniform one."""
    from tokenomy.compress.auto.allocate import uniform_within

    uniform = uniform_within(table, other_bytes(source.path, names), size, allowed)
    if uniform is None or uniform.types == alloc.types:
        return None
    qtype = next(iter(uniform.types.values()))
    step(f"measuring all-{qtype} at this size too, as a check on the estimate")
    alt = target.with_name(target.stem + f".{qtype}.gguf")
    measured = measure_once(source, uniform, -1, imp, meter, alt)
    auto_kld = history[-1].kld.mean
    kept = measured.kld.mean < auto_kld
    if kept:
        alt.replace(target)
        history.append(dataclasses.replace(measured, file=target))
    else:
        alt.unlink()
    note = (f"checked against all-{qtype} ({uniform.bytes / 1e6:.2f} MB): measured "
            f"{measured.kld.mean:.4f} vs the estimated allocation's {auto_kld:.4f}; "
            + (f"kept all-{qtype}: the estimate was wrong for this model (weights near a "
               "quantization grid?)" if kept else "the allocation is kept"))
    return {"type": qtype, "bytes": uniform.bytes, "measured_kld": measured.kld.mean,
            "allocation_measured_kld": auto_kld, "kept_uniform": kept, "note": note}


def _uniform_rescue(source, table, names, allowed, budget: KldBudget, imp, meter, target,
                    step, failed: InvalidInputError):
    """The measured loop missed the budget: try each uniform type, smallest file first, and
    keep the first that meets it (a wrong estimate, not an impossible budget); re-raise
    `failed` when none does."""
    from tokenomy.compress.auto.allocate import uniform_within

    other = other_bytes(source.path, names)
    tried = []
    uniforms = [u for t in allowed if (u := uniform_within(table, other, 2**62, [t]))]
    for uniform in sorted(uniforms, key=lambda u: u.bytes):
        qtype = next(iter(uniform.types.values()))
        step(f"the allocation missed the budget when measured: trying all-{qtype}")
        target.unlink(missing_ok=True)
        measured = measure_once(source, uniform, -1, imp, meter, target)
        tried.append(f"all-{qtype} {measured.kld.mean:.4g} (p99 "
                     f"{measured.kld.p99:.4g})")
        if budget.met(measured.kld):
            note = (f"the estimated allocation missed {budget.describe()} when measured; "
                    f"all-{qtype} ({uniform.bytes / 1e6:.2f} MB) met it at "
                    f"{measured.kld.mean:.4f} (p99 {measured.kld.p99:.4f}): the "
                    "estimate was wrong for this model (weights near a quantization grid?)")
            return [measured], {"type": qtype, "bytes": uniform.bytes,
                                "measured_kld": measured.kld.mean, "kept_uniform": True,
                                "note": note}
    target.unlink(missing_ok=True)
    raise InvalidInputError(f"{failed} Uniform types measured too: {', '.join(tried)}.") \
        from None


def _imatrix_notes(imatrix) -> list[str]:
    if imatrix is None:
        return []
    return [f"importance matrix from your file {imatrix.path} ({imatrix.format}, sha256 "
            f"{imatrix.sha256[:12]}), not computed by tokenomy"]


def _calibration(config: SensitivityConfig, tokens: int):
    from tokenomy.compress.artifact import Calibration

    return Calibration(dataset=config.dataset, split="calibration", samples=config.windows,
                       max_seq_length=config.window_tokens, seed=config.seed, tokens=tokens)


def imatrix_gguf(source: ModelSource, scheme, out: Path, config: SensitivityConfig,
                 step=None, imatrix=None) -> dict:
    """The uniform scheme's own per-tensor types (as llama.cpp chose them for this model),
    rewritten by tokenomy's importance-weighted quantizer. `imatrix`: a user's file
    (`imatrix_file.Imatrix`); then there is no calibration pass at all."""
    import tempfile

    from tokenomy.compress.gguf_backend import quantize

    step = step or (lambda _m: None)
    _need_gguf(source, scheme.name)
    if imatrix is None:
        _, importance = sensitivity_table(source, config, step)
    else:
        importance = imatrix.importance
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        plain = Path(tmp) / "plain.gguf"
        step(f"llama.cpp's per-tensor types for {scheme.gguf_type}")
        quantize(source.path, scheme.model_copy(update={"backend": "gguf"}), plain)
        chosen = {n: t for n, (t, _) in source_tensors(plain).items() if t != "F32"}
    other = sorted({t for t in chosen.values() if t not in blocks.TYPES})
    if other:
        raise InvalidInputError(f"{scheme.name}: llama.cpp chose {', '.join(other)} for some "
                                "tensors; +imatrix covers the 32-element block types only.")
    target = out / f"{source.path.stem.split('.')[0]}.{scheme.gguf_type}-imatrix.gguf"
    step(f"quantizing with the importance matrix -> {target.name}")
    types = write_mixed(source.path, target, chosen, importance, step)
    if imatrix is not None:
        return dict(recipe=json.dumps({"imatrix_file": imatrix.path, "sha256": imatrix.sha256}),
                    tensor_types=types, imatrix=imatrix.provenance(),
                    notes=_imatrix_notes(imatrix))
    return dict(recipe=config.model_dump_json(), tensor_types=types,
                calibration=_calibration(config, config.windows * (config.window_tokens - 1)),
                notes=["importance matrix from the calibration split: "
                       f"{config.windows} windows x {config.window_tokens} tokens of "
                       f"{config.dataset}"])
