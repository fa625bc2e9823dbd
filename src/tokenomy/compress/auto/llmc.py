"""`--scheme auto:llmcompressor`: a compressed-tensors checkpoint with W4A16, W8A16 or
16-bit per Linear, chosen for the fewest bytes under a KLD budget (mean and/or p99 per
token; or the least KLD within a size) by `allocate`'s frontier over `modules`' table,
quantized by llm-compressor's ``oneshot`` (round to nearest, as the w4a16 and w8a16
schemes do) with one config group per type naming its modules exactly, and measured on the
held-out split by `evaluate`. While the measurement is over the budget it moves along the
frontier, as `loop` does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tokenomy.compress.auto.allocate import Frontier, Point, fill, frontier, next_under
from tokenomy.compress.auto.budget import (
    KldBudget,
    KldMeasure,
    check_budget,
    first_point,
    step_down,
)
from tokenomy.compress.auto.loop import Measured, eval_config
from tokenomy.compress.auto.modules import (
    TYPES,
    check_types,
    default_config,
    members,
    module_table,
    weight_args,
)
from tokenomy.compress.auto.table import SensitivityConfig
from tokenomy.errors import InvalidInputError
from tokenomy.sources import ModelSource

ROUNDS = 4  # measured upgrades before giving up on a budget
_IGNORE = ["lm_head"]
_NAME = "auto:llmcompressor"


def recipe(types: dict[str, str], group_size: int) -> list:
    """One QuantizationModifier: a config group per quantized type whose targets are the
    exact module names, and the 16-bit modules (and lm_head) in `ignore`."""
    from compressed_tensors.quantization import QuantizationScheme
    from llmcompressor.modifiers.quantization import QuantizationModifier

    groups = {}
    for qtype in TYPES:
        names = sorted(n for n, t in types.items() if t == qtype)
        args = weight_args(qtype, group_size)
        if names and args is not None:
            groups[f"group_{len(groups)}"] = QuantizationScheme(targets=names, weights=args)
    ignore = sorted(n for n, t in types.items() if weight_args(t, group_size) is None)
    return [QuantizationModifier(config_groups=groups, ignore=ignore + _IGNORE)] if groups \
        else []


def module_types(unit_types: dict[str, str]) -> dict[str, str]:
    """module name -> type, from an allocation's unit (table row) -> type."""
    return {name: t for unit, t in unit_types.items() for name in members(unit)}


def auto_llmcompressor(source: ModelSource, out: Path, *, max_kld: float | None,
                       size_mb: float | None, config: SensitivityConfig | None = None,
                       dataset: str = "sharegpt", seed: int = 0, eval_windows: int = 8,
                       step=None, types: list[str] | None = None,
                       max_kld_p99: float | None = None) -> dict:
    """Write the checkpoint into `out`; returns the manifest's extra fields. `config`:
    the calibration of the estimate (default: `dataset` and `seed`, 16 x 256 tokens, all
    of TYPES); `types`: those it may choose (default: all of the config's; W4A16 and BF16
    for vLLM-CPU, which has no W8A16 kernel); `max_kld_p99`: a budget on the 99th
    percentile of KLD per token, met by measurement."""
    from tokenomy.compress.llmcompressor_backend import quantized_linear_widths, verify_reload
    from tokenomy.compress.schemes import choose_group_size
    from tokenomy.sources import load_transformers, materialize_hf

    step = step or (lambda _m: None)
    budget = KldBudget(max_kld, max_kld_p99)
    check_budget(_NAME, budget, size_mb)
    config = config or default_config(dataset, seed)
    check_types(config.types)
    allowed = list(types or config.types)
    check_types(allowed)
    hf = materialize_hf(source)
    step("loading the model into transformers")
    model, tokenizer = load_transformers(hf)
    widths = quantized_linear_widths(model)
    group, why = choose_group_size(widths)
    table = module_table(source, model, tokenizer, list(widths), group, config, step)
    other = _other_bytes(model, set(widths))
    del model
    front = frontier(table, other, allowed)
    point = first_point(front, budget, None if size_mb is None else int(size_mb * 1e6))
    if not budget.given:  # a size: the frontier point topped up with upgrades that fit
        alloc = fill(front, point, int(size_mb * 1e6))
        point, unit_types = Point(point.step, alloc.bytes, alloc.kld), alloc.types
    else:
        unit_types = front.types_at(point.step)
    tries: list[Measured] = []
    for _ in range(ROUNDS + 1):
        types = module_types(unit_types)
        _write(hf, types, group, out, step)
        measured = _measure(out, source, config, eval_windows, step)
        tries.append(Measured(point, measured, out))
        if not budget.given or budget.met(measured) or point.step == len(front.moves):
            break
        point = next_under(front, point, budget.next_target(point.kld, measured))
        unit_types = front.types_at(point.step)
    if budget.given and not budget.met(tries[-1].kld):
        raise budget.missed([(t.kld, t.point.bytes) for t in tries])
    if budget.p99 is not None and len(tries) == 1:  # the start was a guess
        types = _step_down(hf, front, budget, tries, types, group, out,
                           lambda: _measure(out, source, config, eval_windows, step), step)
    step("reloading with transformers")
    return dict(_made(out, types, table, front, tries, group, why, budget, size_mb, config,
                      eval_windows, allowed), verified=verify_reload(out))


def _step_down(hf: ModelSource, front: Frontier, budget: KldBudget, tries: list[Measured],
               types: dict[str, str], group: int, out: Path, measure, step) -> dict[str, str]:
    """The first try met a p99 budget: step down (`budget.step_down`), writing each
    cheaper checkpoint into `out` and the kept one back after a try that missed. Returns
    the module types in `out`; `tries` gains each try, the kept one last."""
    def attempt(point: Point) -> KldMeasure:
        step(f"the budget held with room: trying {point.bytes / 1e6:.2f} MB")
        _write(hf, module_types(front.types_at(point.step)), group, out, step)
        return measure()

    kept = tries[-1]
    for point, m, ok in step_down(front, budget, kept.point, kept.kld, attempt, ROUNDS):
        if ok:
            tries.append(Measured(point, m, out))
            types = module_types(front.types_at(point.step))
        else:
            tries.insert(len(tries) - 1, Measured(point, m, out))
            _write(hf, types, group, out, step)
    return types


def _other_bytes(model, allocated: set[str]) -> int:
    """Bytes of model.safetensors outside the table: every other tensor in bf16 (a tied
    lm_head once)."""
    weights = {id(m.weight) for n, m in model.named_modules() if n in allocated}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in weights or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * 2
    return total


def _write(hf: ModelSource, types: dict[str, str], group: int, out: Path, step) -> None:
    from tokenomy.compress import llmcompressor_backend as backend
    from tokenomy.compress.schemes import get_scheme
    from tokenomy.sources import load_transformers

    for old in out.iterdir():  # a previous try
        old.unlink()
    counts = Counter(types.values())
    step("llm-compressor oneshot (" + ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
         + ")")
    model, tokenizer = load_transformers(hf, dtype="bfloat16")
    modifiers = recipe(types, group)
    try:
        if modifiers:
            backend.run(model, tokenizer, get_scheme("w4a16"), modifiers, [], 0, out)
        else:  # every module 16-bit: nothing to quantize
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"llm-compressor could not apply {_NAME}: {first} (nothing "
                                "was written).") from e


def _measure(out: Path, source: ModelSource, config: SensitivityConfig, windows: int,
             step) -> KldMeasure:
    from tokenomy.evaluate import evaluate

    step("measuring KLD on the held-out split (transformers)")
    ev = eval_config(config.dataset, windows, config.window_tokens, config.seed)
    result = evaluate(out, source.path, ev, step)
    return KldMeasure(result.kld_mean, result.kld_p99)


def _made(out: Path, types: dict[str, str], table, front: Frontier, tries: list[Measured],
          group: int, why: str, budget: KldBudget, size_mb, config: SensitivityConfig,
          windows: int, allowed: list[str]) -> dict:
    from tokenomy.compress.artifact import Calibration

    final = tries[-1]
    counts = Counter(types.values())
    recipe_file = out / "recipe.yaml"
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    conditions = (f"{windows} held-out windows x {config.window_tokens} tokens of "
                  f"{config.dataset} (evaluation split, seed {config.seed}), candidate on "
                  "transformers, CPU")
    return dict(
        recipe=recipe_file.read_text() if recipe_file.is_file() else "",
        group_size=group, group_size_reason=why,
        calibration=Calibration(dataset=config.dataset, split="calibration",
                                samples=config.windows, max_seq_length=config.window_tokens,
                                seed=config.seed, tokens=table.tokens),
        tensor_types=dict(sorted(types.items())),
        auto={
            "max_kld": budget.mean, "max_kld_p99": budget.p99, "size_mb": size_mb,
            "allowed_types": allowed, "types": {t: counts.get(t, 0) for t in allowed},
            "predicted_kld": final.point.kld, "measured_kld": final.kld.mean,
            "measured_kld_p99": final.kld.p99,
            "predicted_bytes": final.point.bytes, "safetensors_bytes": weights,
            "tries": [{"bytes": t.point.bytes, "predicted_kld": t.point.kld,
                       "measured_kld": t.kld.mean, "measured_kld_p99": t.kld.p99}
                      for t in tries],
            "frontier_points": len(front.points),
            "measured_on": conditions,
            "calibration_tokens": table.tokens,
        },
        notes=["modules: " + ", ".join(f"{counts.get(t, 0)} {t}" for t in allowed)
               + f"; estimated mean KLD {final.point.kld:.4f}, measured "
               f"{final.kld.mean:.4f} (p99 {final.kld.p99:.4f}; {conditions})"],
    )
