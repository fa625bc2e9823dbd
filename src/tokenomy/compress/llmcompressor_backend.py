"""llm-compressor backend: recipe from a scheme, calibration set, ``oneshot``, save as
compressed-tensors."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tokenomy.compress.schemes import CompressScheme, choose_group_size
from tokenomy.errors import InvalidInputError

IGNORE = ["lm_head"]  # the output head stays 16-bit (llm-compressor's usual ignore)


def quantized_linear_widths(model) -> dict[str, int]:
    """Input width of every Linear a recipe targets (lm_head excluded)."""
    import torch

    return {
        name: module.in_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in IGNORE
    }


def build_recipe(scheme: CompressScheme, model) -> tuple[list, int | None, str]:
    """(modifiers, group size or None, why that group size)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    group, why = None, ""
    if scheme.int_bits:
        args = dict(num_bits=scheme.int_bits, type="int", symmetric=True,
                    strategy=scheme.strategy)
        if scheme.strategy == "group":
            group, why = choose_group_size(quantized_linear_widths(model))
            args["group_size"] = group
        weights = QuantizationArgs(**args)
        quant = {"config_groups": {"group_0": QuantizationScheme(targets=["Linear"],
                                                                  weights=weights)}}
    else:
        quant = {"scheme": scheme.preset, "targets": ["Linear"]}
    if scheme.algorithm == "rtn":
        return [QuantizationModifier(ignore=IGNORE, **quant)], group, why
    if scheme.algorithm == "gptq":
        return [GPTQModifier(ignore=IGNORE, **quant)], group, why
    if scheme.algorithm == "awq":
        return [AWQModifier(ignore=IGNORE, **quant)], group, why
    if scheme.algorithm == "smoothquant-gptq":
        return [SmoothQuantModifier(smoothing_strength=scheme.smoothing_strength),
                GPTQModifier(ignore=IGNORE, **quant)], group, why
    if scheme.algorithm == "sparsegpt":
        # SparseGPT names a layer-level lm_head "lm_head." and so needs a pattern
        return [SparseGPTModifier(sparsity=scheme.sparsity, mask_structure=scheme.mask_structure,
                                  targets=["Linear"], ignore=["re:.*lm_head"])], group, why
    raise InvalidInputError(f"scheme {scheme.name} has no llm-compressor algorithm.")


def calibration_dataset(tokenizer, texts: list[str], max_seq_length: int):
    from datasets import Dataset

    encoded = tokenizer(texts, truncation=True, max_length=max_seq_length,
                        add_special_tokens=False)
    return Dataset.from_dict({"input_ids": encoded["input_ids"],
                              "attention_mask": encoded["attention_mask"]})


@contextlib.contextmanager
def _no_pinning_without_accelerator():
    """AWQ pins its cached activations before the grid search (llm-compressor 0.14,
    ``IntermediatesCache.pin_memory``), which raises "Cannot access accelerator device"
    on a CPU-only torch; pinning only speeds host-to-GPU copies, so skip it there."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available() or not hasattr(IntermediatesCache, "pin_memory"):
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def run(model, tokenizer, scheme: CompressScheme, modifiers: list, texts: list[str],
        max_seq_length: int, output: Path) -> None:
    """Apply the recipe in place and save a compressed-tensors checkpoint to `output`."""
    from llmcompressor import oneshot

    kwargs = {}
    if scheme.calibration:
        kwargs = dict(dataset=calibration_dataset(tokenizer, texts, max_seq_length),
                      num_calibration_samples=len(texts), max_seq_length=max_seq_length,
                      shuffle_calibration_samples=False)
    with _no_pinning_without_accelerator():
        oneshot(model=model, tokenizer=tokenizer, recipe=modifiers, **kwargs)
    model.save_pretrained(output, save_compressed=True)
    tokenizer.save_pretrained(output)


def verify_reload(output: Path) -> str:
    """Reload the checkpoint in plain transformers and run one forward pass; say what it
    found."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    if not torch.isfinite(logits).all():
        raise InvalidInputError(f"the compressed checkpoint at {output} produces NaN/inf "
                                "logits; this scheme does not work for this model.")
    return (f"transformers from_pretrained + forward pass over {ids.shape[1]} tokens: "
            f"finite logits, |max| {float(logits.abs().max()):.1f}")
