"""Does distillation recover a pruned SmolLM2-135M-Instruct better than plain fine-tuning?

The embedded model (30 layers) is pruned by `tokenomy distill prune` (--drop 6 = 20%),
then trained on the same ShareGPT calibration-split tokens by (b) next-token cross
entropy and (c) logit distillation (forward KL on the teacher's cached top-32), and each
is measured against the teacher on the held-out evaluation split that `tokenomy eval`
uses (same windows, same top-128 reference): (a) the pruned model without training.
Prints a table with bootstrap 95% intervals (resampling held-out windows and seeds) and
writes a recovery curve (tokens vs held-out KLD) as PNG and the raw numbers as JSON.

Run it pinned to one core, in the background:

    taskset -c 1 python benchmarks/distill_recovery.py --tokens 20480 --seeds 3 \\
        --out /tmp/distill-recovery [--pruned DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def heldout_kld(model, ref) -> np.ndarray:
    """Mean KLD vs the teacher per held-out window [W], on eval's own reference."""
    import torch

    from tokenomy.evaluate import metrics

    model.eval()
    out = []
    with torch.no_grad():
        for window, r in zip(ref.windows, ref.window_refs, strict=True):
            logits = model(torch.as_tensor(window)[None], use_cache=False).logits[0, :-1]
            logp = metrics.log_softmax(logits.float().numpy())
            out.append(metrics.compare(r, logp, window[1:]).kld.mean())
    return np.asarray(out)


def bootstrap(per_seed: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean over [seeds, windows], resampling both."""
    rng = np.random.default_rng(seed)
    s, w = per_seed.shape
    means = [per_seed[rng.integers(0, s, s)][:, rng.integers(0, w, w)].mean()
             for _ in range(n)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run_arm(student, objective, seed, args, ref, work) -> dict:
    import torch

    from tokenomy.distill.train import TrainConfig, train

    config = TrainConfig(objective=objective, tokens=args.tokens, seed=seed,
                         window_tokens=args.window_tokens, batch_windows=args.batch_windows,
                         lr=args.lr, precision=args.precision, checkpoint_minutes=1e4)
    steps_total = -(-args.tokens // config.step_tokens)
    marks = {max(1, round(steps_total * f)) for f in (0.25, 0.5, 0.75, 1.0)}
    curve, eval_seconds = [], 0.0

    def measure(step, tokens, model):
        nonlocal eval_seconds
        if step in marks:
            t = time.perf_counter()
            curve.append((tokens, heldout_kld(model, ref).tolist()))
            model.train()
            eval_seconds += time.perf_counter() - t

    out = work / f"{objective}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = train(student, None, out, config, step=lambda _m: None, callback=measure)
    wall = time.perf_counter() - start - eval_seconds
    torch.set_num_threads(1)
    return {"objective": objective, "seed": seed, "tokens": manifest.runs[-1].tokens,
            "train_seconds": round(manifest.runs[-1].seconds - eval_seconds, 1),
            "wall_seconds_incl_cache": round(wall, 1), "curve": curve,
            "final": curve[-1][1], "loss_curve": manifest.runs[-1].loss_curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--drop", type=int, default=6)
    p.add_argument("--pruned", type=Path, help="An existing `distill prune` output to reuse.")
    p.add_argument("--tokens", type=int, default=20480, help="Training tokens per arm.")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--window-tokens", type=int, default=256)
    p.add_argument("--batch-windows", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("distill-recovery"))
    p.add_argument("--report-only", action="store_true",
                   help="Print the table and plot from --out's results.json (runs so far).")
    args = p.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        args = argparse.Namespace(**{**saved["args"], "out": args.out})
        report(np.asarray(saved["pruned"]), saved["arms"], args, args.pruned)
        return

    import torch

    torch.set_num_threads(1)
    from tokenomy.distill import PruneConfig, prune
    from tokenomy.evaluate import EvalConfig
    from tokenomy.evaluate.reference import build_reference
    from tokenomy.sources import load_transformers, resolve_source

    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    student = args.pruned or args.out / f"pruned-drop{args.drop}"
    if not student.exists():
        log(f"pruning {args.drop} of 30 layers")
        prune(None, student, PruneConfig(drop=args.drop, window_tokens=128), step=log)
    log("held-out reference (eval's: evaluation split, top-128)")
    ref = build_reference(resolve_source(None),
                          EvalConfig(windows=args.eval_windows, window_tokens=256), log)
    torch.set_num_threads(1)
    pruned, _ = load_transformers(resolve_source(student))
    base = heldout_kld(pruned, ref)
    del pruned
    log(f"(a) pruned, no training: KLD {base.mean():.4f}")
    arms = []
    for seed in range(args.seeds):
        for objective in ("ce", "kd"):
            log(f"seed {seed}: {objective} on {args.tokens} tokens")
            arms.append(run_arm(student, objective, seed, args, ref, args.out))
            log(f"  -> KLD {np.mean(arms[-1]['final']):.4f} "
                f"({arms[-1]['train_seconds']} s training)")
            (args.out / "results.json").write_text(json.dumps(
                {"pruned": base.tolist(), "arms": arms, "args": vars(args) | {
                    "out": str(args.out), "pruned": str(student)}}, indent=1))
    report(base, arms, args, student)


def report(base, arms, args, student) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.console import Console
    from rich.table import Table

    done = {a["seed"] for a in arms if a["objective"] == "kd"} & \
        {a["seed"] for a in arms if a["objective"] == "ce"}
    arms = [a for a in arms if a["seed"] in done]  # seeds with both arms measured
    manifest = json.loads((Path(student) / "tokenomy.json").read_text())
    removed = [r["index"] for r in manifest["layers_removed"]]
    table = Table(title=f"SmolLM2-135M-Instruct, blocks {removed} of 30 removed; held-out KLD "
                        f"vs the teacher ({len(base)} x 256 tokens of ShareGPT's evaluation "
                        f"split); {args.tokens:,} training tokens per arm, "
                        f"{len({a['seed'] for a in arms})} seeds, 1 CPU core, {args.precision}")
    for col in ("arm", "KLD mean", "95% CI", "train s/arm"):
        table.add_column(col, justify="right")
    table.add_row("(a) pruned, no training", f"{base.mean():.4f}",
                  "[{:.4f}, {:.4f}]".format(*bootstrap(base[None])), "0")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, objective in (("(b) CE fine-tuning", "ce"), ("(c) KD (top-32 forward KL)", "kd")):
        runs = [a for a in arms if a["objective"] == objective]
        finals = np.asarray([r["final"] for r in runs])
        table.add_row(name, f"{finals.mean():.4f}", "[{:.4f}, {:.4f}]".format(*bootstrap(finals)),
                      f"{np.mean([r['train_seconds'] for r in runs]):.0f}")
        tokens = [0] + [t for t, _ in runs[0]["curve"]]
        kld = np.asarray([[base.mean()] + [np.mean(v) for _, v in r["curve"]] for r in runs])
        ax.errorbar(tokens, kld.mean(0), yerr=kld.std(0), marker="o", capsize=3, label=name)
    by_seed = {o: np.asarray([a["final"] for a in sorted(arms, key=lambda a: a["seed"])
                              if a["objective"] == o]) for o in ("ce", "kd")}
    diff = by_seed["kd"] - by_seed["ce"]  # paired: same seed, same held-out windows
    table.add_row("(c) - (b), paired", f"{diff.mean():+.4f}",
                  "[{:+.4f}, {:+.4f}]".format(*bootstrap(diff)), "")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out KLD vs teacher (mean)")
    ax.set_title(f"Recovery after dropping {len(removed)} of 30 layers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "recovery.png", dpi=120)
    Console(width=200).print(table)
    print(f"conditions: {platform.processor() or platform.machine()}, torch threads 1, "
          f"window {args.window_tokens} tokens x {args.batch_windows} per step, lr {args.lr}, "
          f"AdamW + cosine; curve: {args.out / 'recovery.png'}")


if __name__ == "__main__":
    main()
