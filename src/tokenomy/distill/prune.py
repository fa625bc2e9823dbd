"""`prune`: which transformer blocks to drop, measured. Every block is scored by the KL
divergence from the teacher when it alone is removed (plus the cheaper block-influence and
angular-distance scores, one pass), then blocks are removed greedily: at each step the
best-ranked remaining candidates are measured again with the blocks already removed, and
the one that costs least goes. The student is written as an HF directory with a
`tokenomy.json` manifest."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from tokenomy.distill import layers as L
from tokenomy.distill import manifest as M
from tokenomy.distill.data import token_windows
from tokenomy.errors import InvalidInputError
from tokenomy.numbers import finite
from tokenomy.sources import content_hash, load_transformers, materialize_hf, resolve_source


class PruneConfig(BaseModel):
    """How many blocks to drop and what to measure on. Saved in the student's manifest."""

    drop: finite(ge=0, le=100_000, integer=True) | None = None
    keep_layers: finite(ge=0, le=100_000, integer=True) | None = None
    dataset: str = "sharegpt"  # calibration split of 'sharegpt' or a .jsonl file
    windows: finite(ge=1, le=10_000, integer=True) = 4
    window_tokens: finite(ge=8, le=100_000, integer=True) = 256
    candidates: finite(ge=1, le=100_000, integer=True) = 6  # re-measured per greedy step
    seed: finite(ge=0, le=2**32 - 1, integer=True) = 0

    def target(self, depth: int) -> int:
        """Blocks to keep, checked against the model's depth."""
        if (self.drop is None) == (self.keep_layers is None):
            raise InvalidInputError("give exactly one of --drop N or --keep-layers N.")
        keep = depth - self.drop if self.drop is not None else self.keep_layers
        if not 1 <= keep < depth:
            asked = f"--drop {self.drop}" if self.drop is not None else \
                f"--keep-layers {self.keep_layers}"
            raise InvalidInputError(
                f"{asked} leaves {keep} of the model's {depth} layers: keep between 1 and "
                f"{depth - 1} (drop between 1 and {depth - 1}).")
        return keep


def default_output(model: str | Path | None, config: PruneConfig) -> Path:
    name = resolve_source(model).name
    if config.drop is not None:
        return Path(f"{name}-drop{config.drop}")
    return Path(f"{name}-{config.keep_layers}layers")


def check_output(output: Path) -> None:
    if output.exists():
        raise InvalidInputError(f"output {output} exists; distill never overwrites: choose "
                                "a new directory.")


def prune(model: str | Path | None, output: str | Path, config: PruneConfig,
          step=None) -> M.DistillManifest:
    """Drop blocks of `model` (HF dir, GGUF, or None: the embedded SmolLM2) to the target
    depth and write the student to the new directory `output`."""
    import torch

    step = step or (lambda _msg: None)
    output = Path(output)
    check_output(output)
    source = resolve_source(model)
    hf = materialize_hf(source)
    depth = L.check_decoder(hf.path)
    keep = config.target(depth)
    step(f"loading {source.name}")
    torch.manual_seed(config.seed)
    net, tokenizer = load_transformers(hf)
    windows = [torch.as_tensor(w) for w in token_windows(
        tokenizer, config.dataset, config.windows, config.window_tokens, config.seed)]
    start = time.perf_counter()
    ref = L.teacher_logp(net, windows)
    influence, angular = L.similarity_scores(net, windows)
    alone = []
    for i in range(depth):
        step(f"measuring each block removed {i + 1}/{depth}")
        alone.append(L.mean_kld(net, windows, ref, {i}))
    removed = _greedy(net, windows, ref, alone, depth - keep, config.candidates, step)
    L.remove(net, {i for i, _ in removed})
    step("writing the student")
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    net.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    manifest = M.DistillManifest(
        created_at="", layers=keep,
        teacher=M.Teacher(path=str(hf.path), sha256=content_hash(hf), layers=depth,
                          gguf=str(source.path) if source.kind == "gguf" else None),
        layers_removed=[M.RemovedLayer(index=i, kld_alone=alone[i], kld_after=after,
                                       block_influence=influence[i],
                                       angular_distance=angular[i])
                        for i, after in removed],
        calibration={**config.model_dump(), "tokens": sum(len(w) for w in windows),
                     "seconds": round(time.perf_counter() - start, 1),
                     "all_blocks": [{"index": i, "kld_alone": alone[i],
                                     "block_influence": influence[i],
                                     "angular_distance": angular[i]} for i in range(depth)]},
    )
    M.write(partial, manifest)
    partial.rename(output)
    return manifest


def _greedy(net, windows, ref, alone, drop, candidates, step) -> list[tuple[int, float]]:
    """Remove `drop` blocks one at a time; each step re-measures the `candidates` best
    blocks by their KLD alone (with those already removed) and takes the cheapest."""
    removed: list[tuple[int, float]] = []
    gone: set[int] = set()
    for n in range(drop):
        step(f"greedy removal {n + 1}/{drop}")
        ranked = sorted((i for i in range(len(alone)) if i not in gone), key=alone.__getitem__)
        if not gone:
            best = ranked[0]
            removed.append((best, alone[best]))
        else:
            trials = {i: L.mean_kld(net, windows, ref, gone | {i}) for i in ranked[:candidates]}
            best = min(trials, key=trials.__getitem__)
            removed.append((best, trials[best]))
        gone.add(best)
    return removed
