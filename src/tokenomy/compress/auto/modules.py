"""The sensitivity table of `--scheme auto:llmcompressor`: for every unit of Linear
modules W4A16 would quantize, the bytes and the estimated added mean KLD of each type
(W4A16 at the w4a16 scheme's group size, W8A16 per channel, BF16 left 16-bit),
``sum(F * e^2) / 2 / tokens`` with F the diagonal Fisher of `stats.collect` and `e` the
error of compressed-tensors' own round trip (llm-compressor's weight observer and
``fake_quantize``) of the bf16 weight. BF16 is the reference: 0.

A unit is the modules vLLM fuses into one layer (q/k/v_proj -> qkv_proj, gate/up_proj ->
gate_up_proj): vLLM refuses a fused layer whose parts differ in scheme, so they share one
type. Rows are named ``parent.q_proj+k_proj+v_proj``. Cached under
$TOKENOMY_HOME/sensitivity by content hash of the model and the config.
"""

from __future__ import annotations

import hashlib
import json

from tokenomy.compress.auto.table import SensitivityConfig, Table, TensorRow
from tokenomy.errors import InvalidInputError
from tokenomy.home import cache_dir
from tokenomy.sources import ModelSource, content_hash

CACHE_VERSION = 1
TYPES = ("W4A16", "W8A16", "BF16")
_FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_SHAPE_BYTES = 16  # compressed-tensors stores weight_shape as 2 x int64


def default_config(dataset: str = "sharegpt", seed: int = 0) -> SensitivityConfig:
    return SensitivityConfig(dataset=dataset, seed=seed, imatrix=False, types=list(TYPES))


def check_types(types: list[str]) -> None:
    bad = [t for t in types if t not in TYPES]
    if bad or not types:
        raise InvalidInputError(f"unknown type(s) {bad or types} for --scheme "
                                f"auto:llmcompressor: choose from {', '.join(TYPES)}.")


def members(unit: str) -> list[str]:
    """The module names of a table row: 'a.b.q_proj+k_proj' -> ['a.b.q_proj', 'a.b.k_proj']."""
    parent, _, leaves = unit.rpartition(".")
    return [f"{parent}.{leaf}" if parent else leaf for leaf in leaves.split("+")]


def units(names: list[str]) -> list[str]:
    """Group module names into rows: vLLM's fused layers together, the rest alone."""
    present, out, taken = set(names), [], set()
    for name in names:
        if name in taken:
            continue
        parent, _, leaf = name.rpartition(".")
        group = next((g for g in _FUSED if leaf in g), (leaf,))
        found = [g for g in group if (f"{parent}.{g}" if parent else g) in present]
        taken.update(f"{parent}.{g}" if parent else g for g in found)
        out.append(f"{parent}.{'+'.join(found)}" if parent else "+".join(found))
    return out


def weight_args(qtype: str, group_size: int):
    """compressed-tensors QuantizationArgs of a type (None for BF16): as the w4a16 and
    w8a16 schemes build them."""
    from compressed_tensors.quantization import QuantizationArgs

    if qtype == "W4A16":
        return QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                group_size=group_size)
    if qtype == "W8A16":
        return QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
    return None


def packed_bytes(qtype: str, shape: tuple[int, int], group_size: int) -> int:
    """Bytes in model.safetensors: int4 codes + a bf16 scale per group, int8 codes + a bf16
    scale per row, or bf16 weights."""
    rows, cols = shape
    if qtype == "W4A16":
        return rows * cols // 2 + rows * (cols // group_size) * 2 + _SHAPE_BYTES
    if qtype == "W8A16":
        return rows * cols + rows * 2 + _SHAPE_BYTES
    return rows * cols * 2


def round_trip(weight, qtype: str, group_size: int):
    """weight: [out, in] bf16 -> what the checkpoint dequantizes to, via llm-compressor's
    weight observer (memoryless min-max) and compressed-tensors' fake_quantize."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from llmcompressor.observers import Observer

    args = weight_args(qtype, group_size)
    if args is None:
        return weight
    observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=args)
    qparams = observer(weight).get_qparams()
    return fake_quantize(weight, qparams["scale"], qparams["zero_point"], args)


def _key(digest: str, config: SensitivityConfig, group_size: int) -> str:
    text = json.dumps(["llmcompressor", CACHE_VERSION, digest, config.model_dump(), group_size],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def module_table(source: ModelSource, model, tokenizer, targets: list[str], group_size: int,
                 config: SensitivityConfig, step=None) -> Table:
    """The table for `targets` (module names of `model`, a float32 transformers model of
    `source`); computed once per model + config + group size."""
    step = step or (lambda _msg: None)
    check_types(config.types)
    digest = content_hash(source)
    path = cache_dir("sensitivity") / _key(digest, config, group_size)
    if (path / "table.json").is_file():
        step("sensitivity: cached")
        return Table.model_validate_json((path / "table.json").read_text())
    table = _compute(model, tokenizer, targets, group_size, config, digest, step)
    partial = path.with_name(path.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "table.json").write_text(table.model_dump_json())
    partial.rename(path)
    return table


def _compute(model, tokenizer, targets: list[str], group_size: int,
             config: SensitivityConfig, digest: str, step) -> Table:
    import torch

    from tokenomy.capability import usable_cores
    from tokenomy.compress.auto.stats import calibration_windows, collect

    torch.set_num_threads(usable_cores())
    modules = dict(model.named_modules())
    windows = calibration_windows(tokenizer, config.dataset, config.windows,
                                  config.window_tokens, config.seed)
    stats = collect(model, windows, config.seed, step,
                    params={name: modules[name].weight for name in targets})
    rows = []
    for i, unit in enumerate(units(targets)):
        step(f"round trips: unit {i + 1} ({unit})")
        kld, size = dict.fromkeys(config.types, 0.0), dict.fromkeys(config.types, 0)
        for name in members(unit):
            weight = torch.from_numpy(stats.weights[name]).to(torch.bfloat16)  # [out, in]
            fisher = torch.from_numpy(stats.fisher[name])
            for qtype in config.types:
                err = round_trip(weight, qtype, group_size).float() - weight.float()
                kld[qtype] += float((fisher * err * err).sum(dtype=torch.float64)
                                    / 2 / stats.tokens)
                size[qtype] += packed_bytes(qtype, tuple(weight.shape), group_size)
        rows.append(TensorRow(name=unit, shape=_unit_shape(stats, unit), kld=kld, bytes=size))
    return Table(model_sha256=digest, config=config, tokens=stats.tokens, rows=rows)


def _unit_shape(stats, unit: str) -> tuple[int, int]:
    shapes = [stats.weights[n].shape for n in members(unit)]
    return (sum(s[0] for s in shapes), shapes[0][1])

