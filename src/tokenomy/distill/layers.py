"""A decoder-only model's transformer blocks: find them, run the model without some of
them, score each one (KLD when removed alone, block influence, angular distance) and
remove them for good (config and layer indices renumbered)."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

from tokenomy.errors import InvalidInputError


def check_decoder(directory: Path) -> int:
    """The number of transformer blocks of a decoder-only causal LM's HF directory; any
    other model (encoder, encoder-decoder, no block count) is one clear error."""
    cfg = json.loads((Path(directory) / "config.json").read_text())
    text = cfg.get("text_config") or {}
    arch = cfg.get("architectures") or []
    layers = cfg.get("num_hidden_layers", text.get("num_hidden_layers"))
    if cfg.get("is_encoder_decoder") or not any(a.endswith("ForCausalLM") for a in arch) \
            or not isinstance(layers, int):
        raise InvalidInputError(
            f"{directory} is not a decoder-only causal language model (architectures "
            f"{arch or 'unknown'}): distill drops transformer blocks of models like Llama, "
            "Qwen or SmolLM.")
    return layers


def blocks(model):
    """The ModuleList of transformer blocks (model.model.layers in the Llama family)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise InvalidInputError(f"{type(model).__name__} has no model.layers: distill supports "
                                "decoder-only models of the Llama/Qwen/Mistral family.")
    return layers


@contextmanager
def without(model, drop: set[int]):
    """Run `model` with the blocks in `drop` skipped (restored on exit)."""
    import torch

    layers = blocks(model)
    cfg = model.config
    saved = (list(layers), cfg.num_hidden_layers, getattr(cfg, "layer_types", None))
    keep = [i for i in range(len(layers)) if i not in drop]
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    cfg.num_hidden_layers = len(keep)
    if saved[2] is not None:
        cfg.layer_types = [saved[2][i] for i in keep]
    try:
        yield model
    finally:
        model.model.layers = torch.nn.ModuleList(saved[0])
        cfg.num_hidden_layers = saved[1]
        if saved[2] is not None:
            cfg.layer_types = saved[2]


def remove(model, drop: set[int]) -> None:
    """Remove the blocks in `drop` for good: config updated, layer indices renumbered so
    the saved checkpoint's keys and the KV cache slots run 0..n-1."""
    import torch

    layers = blocks(model)
    keep = [layers[i] for i in range(len(layers)) if i not in drop]
    for new, layer in enumerate(keep):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    types = getattr(model.config, "layer_types", None)
    if types is not None:
        model.config.layer_types = [t for i, t in enumerate(types) if i not in drop]
    model.model.layers = torch.nn.ModuleList(keep)
    model.config.num_hidden_layers = len(keep)


def mean_kld(model, windows, teacher_logp, drop: set[int] = frozenset()) -> float:
    """Mean KL(teacher || model without `drop`) over the calibration tokens."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad(), without(model, set(drop)):
        for ids, ref in zip(windows, teacher_logp, strict=True):  # ids: [T]; ref: [T, V]
            logp = torch.log_softmax(model(ids[None], use_cache=False).logits[0].float(), -1)
            total += float((ref.exp() * (ref - logp)).sum(-1).sum())
            count += ref.shape[0]
    return total / count


def teacher_logp(model, windows) -> list:
    import torch

    with torch.no_grad():
        return [torch.log_softmax(model(ids[None], use_cache=False).logits[0].float(), -1)
                for ids in windows]


def similarity_scores(model, windows) -> tuple[list[float], list[float]]:
    """Per block: (block influence 1 - cos(in, out), angular distance arccos(cos)/pi),
    each the mean over calibration tokens, from one pass with hooks on every block."""
    import torch

    layers = blocks(model)
    n = len(layers)
    cos_sum, ang_sum, tokens = [0.0] * n, [0.0] * n, 0
    inputs: dict[int, object] = {}

    def pre(i):
        def hook(_module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i):
        def hook(_module, _args, output):
            out = output[0] if isinstance(output, tuple) else output  # [1, T, D]
            cos = torch.nn.functional.cosine_similarity(inputs[i].float(), out.float(), dim=-1)
            cos = cos.clamp(-1.0, 1.0)
            cos_sum[i] += float(cos.sum())
            ang_sum[i] += float(torch.arccos(cos).sum()) / math.pi
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i)))
    try:
        with torch.no_grad():
            for ids in windows:
                model(ids[None], use_cache=False)
                tokens += ids.shape[0]
    finally:
        for h in handles:
            h.remove()
    return [1 - c / tokens for c in cos_sum], [a / tokens for a in ang_sum]
