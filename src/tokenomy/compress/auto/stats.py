"""Calibration statistics of a model, in one pass over calibration windows: the diagonal
Fisher of every quantizable weight and the importance matrix (mean squared input
activation of every column) of every linear, keyed by GGUF tensor name.

Fisher: at each position a label is drawn from the model's own next-token distribution
and the window's summed log-likelihood of those labels is backpropagated; the squared
gradient, summed over windows, estimates sum_t F_t (the cross terms vanish in expectation
because the labels are independent draws). The Hessian of KL(base || quantized) at the
base is that Fisher, so a weight error `e` adds about ``sum(F * e^2) / 2 / tokens`` of
mean KLD per token (second order; summed over tensors, cross terms ignored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tokenomy.errors import InvalidInputError

_HF_TO_GGUF = (
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", r"blk.\1.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", r"blk.\1.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", r"blk.\1.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"blk.\1.attn_output.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"blk.\1.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"blk.\1.ffn_down.weight"),
)


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor of a Hugging Face Llama-family weight, or None if not quantizable.
    GGUF permutes the rows of attn_q/attn_k (RoPE layout); blocks run along each row, so
    a row's quantization error is the same in either layout."""
    for pattern, repl in _HF_TO_GGUF:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, repl, hf_name)
    return None


@dataclass
class Stats:
    weights: dict[str, np.ndarray]  # GGUF name -> weight in HF layout [out, in], float32
    fisher: dict[str, np.ndarray]  # GGUF name -> sum over windows of grad^2, [out, in]
    importance: dict[str, np.ndarray]  # GGUF name -> mean squared input activation [in]
    tokens: int  # positions the Fisher was summed over


def quantizable(model) -> dict[str, object]:
    """GGUF name -> parameter, for every 2-D weight the auto scheme may quantize (a tied
    lm_head is the embedding, counted once)."""
    out, seen = {}, set()
    for name, param in model.named_parameters():
        target = gguf_name(name)
        if target and param.ndim == 2 and id(param) not in seen:
            seen.add(id(param))
            out[target] = param
    return out


def collect(model, windows: np.ndarray, seed: int, step=None,
            params: dict[str, object] | None = None) -> Stats:
    """windows: [W, T] calibration token ids; `params`: name -> parameter to collect
    (default `quantizable`, keyed by GGUF name)."""
    import torch

    step = step or (lambda _msg: None)
    params = quantizable(model) if params is None else params
    if not params:
        raise InvalidInputError("this model has no quantizable layers (no attention, FFN, "
                                "embedding or output weights tokenomy knows how to map to "
                                "GGUF tensors); --scheme auto has nothing to choose.")
    sums, counts, hooks = {}, {}, []
    by_param = {id(p): n for n, p in params.items()}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) in by_param:
            hooks.append(module.register_forward_hook(_hook(by_param[id(module.weight)],
                                                            sums, counts)))
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    try:
        for i, window in enumerate(windows):
            step(f"Fisher + activations: window {i + 1}/{len(windows)}")
            ids = torch.as_tensor(window[None, :], dtype=torch.long)
            logits = model(ids).logits[0, :-1].float()  # [T-1, V]
            logp = torch.log_softmax(logits, dim=-1)
            labels = torch.multinomial(logp.detach().exp(), 1, generator=gen)  # [T-1, 1]
            (-logp.gather(1, labels).sum()).backward()
            for name, p in params.items():
                fisher[name] += p.grad.float() ** 2
            model.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
    importance = {n: (sums[n] / counts[n]).numpy().astype(np.float32) for n in sums}
    return Stats(
        weights={n: p.detach().float().numpy().copy() for n, p in params.items()},
        fisher={n: f.numpy() for n, f in fisher.items()},
        importance=importance,
        tokens=int(windows.shape[0] * (windows.shape[1] - 1)),
    )


def _hook(name: str, sums: dict, counts: dict):
    def record(_module, inputs, _output):
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])  # [tokens, in]
        sums[name] = sums.get(name, 0) + (x * x).sum(0)
        counts[name] = counts.get(name, 0) + x.shape[0]
    return record


def calibration_windows(tokenizer, dataset: str, windows: int, tokens: int,
                        seed: int) -> np.ndarray:
    """[windows, tokens] ids from the calibration split (never the evaluation one)."""
    from tokenomy.evaluate.prompts import calibration_texts

    need = windows * tokens
    ids: list[int] = []
    for text in calibration_texts(tokenizer, dataset, windows * 8, seed):
        ids.extend(tokenizer(text, add_special_tokens=False).input_ids)
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise InvalidInputError(f"calibration data {dataset} gives {len(ids)} tokens, fewer "
                                f"than {need} ({windows} windows x {tokens}); ask for fewer.")
    return np.asarray(ids[:need], dtype=np.int64).reshape(windows, tokens)
