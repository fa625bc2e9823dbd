"""The training loop, on one screen: AdamW, linear warm-up then cosine decay, gradient
accumulation over `batch_windows` windows, a checkpoint every few minutes carrying the
model, optimizer, scheduler, data position and RNG states, so `--resume` continues where
the last checkpoint left off and reaches the same loss as an uninterrupted run."""

from __future__ import annotations

import math
import os
import random
import time

import numpy as np

from tokenomy.distill.cache import autocast
from tokenomy.distill.loss import ce_loss, kd_loss

CURVE_POINTS = 100  # loss-curve entries per run, at most about


def window_index(slot: int, windows: int, seed: int) -> int:
    """The window used at position `slot` of the data stream: a fresh permutation of all
    windows each epoch, a pure function of (slot, seed) so the data position is one int."""
    epoch, pos = divmod(slot, windows)
    return int(np.random.default_rng([seed, epoch]).permutation(windows)[pos])


def lr_factor(step: int, total: int, warmup_share: float, min_share: float) -> float:
    warm = max(1, int(warmup_share * total))
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return min_share + (1 - min_share) * 0.5 * (1 + math.cos(math.pi * progress))


def run_loop(run, step, callback=None) -> tuple[list[tuple[int, float]], int]:
    """Train run.student for run.total_steps (or until --minutes); returns (loss curve,
    tokens seen in this run)."""
    import torch

    cfg, model, total = run.config, run.student, run.total_steps
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, cfg.warmup_share, cfg.min_lr_share))
    path = run.out / "checkpoint" / "state.pt"
    state = {"step": 0, "tokens": 0, "curve": [], "seconds": 0.0, "acc": [0.0, 0]}
    if path.is_file():
        state = _load(path, model, opt, sched)
        step(f"resumed at step {state['step']} ({state['tokens']:,} tokens)")
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
    every = max(1, total // CURVE_POINTS)
    began = time.perf_counter() - state["seconds"]
    saved_at = time.perf_counter()
    for s in range(state["step"], total):
        if cfg.minutes and time.perf_counter() - began > cfg.minutes * 60:
            break
        loss = _step(run, model, s, device)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"], state["tokens"] = s + 1, state["tokens"] + cfg.step_tokens
        state["acc"] = [state["acc"][0] + loss, state["acc"][1] + 1]
        if (s + 1) % every == 0 or s + 1 == total:
            state["curve"].append((state["tokens"], state["acc"][0] / state["acc"][1]))
            state["acc"] = [0.0, 0]
        step(f"training {s + 1}/{total}")
        if callback is not None:
            callback(s + 1, state["tokens"], model)
        due = (cfg.checkpoint_steps and (s + 1) % cfg.checkpoint_steps == 0) or \
            time.perf_counter() - saved_at > cfg.checkpoint_minutes * 60
        if due and s + 1 < total:
            state["seconds"] = time.perf_counter() - began
            _save(path, state, model, opt, sched)
            saved_at = time.perf_counter()
    model.eval()
    return [(int(t), float(v)) for t, v in state["curve"]], state["tokens"]


def _step(run, model, s: int, device) -> float:
    """One optimizer step's forward/backward over batch_windows windows; the mean loss."""
    import torch

    cfg, total = run.config, 0.0
    for j in range(cfg.batch_windows):
        w = window_index(s * cfg.batch_windows + j, len(run.windows), cfg.seed)
        ids = torch.as_tensor(run.windows[w], device=device)  # [T]
        with autocast(cfg.precision):
            logits = model(ids[None], use_cache=False).logits[0, :-1]  # [T-1, V]
        if cfg.objective == "kd":
            top_ids, top_logp = (t.to(device) for t in run.cache.get(w))
            loss = kd_loss(logits, top_ids, top_logp)
        else:
            loss = ce_loss(logits, ids[1:])
        (loss / cfg.batch_windows).backward()
        total += float(loss.detach()) / cfg.batch_windows
    return total


def _save(path, state, model, opt, sched) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state": state, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()}}, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint whole


def _load(path, model, opt, sched) -> dict:
    import torch

    saved = torch.load(path, weights_only=False)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    np.random.set_state(saved["rng"]["numpy"])
    random.setstate(saved["rng"]["python"])
    return saved["state"]
