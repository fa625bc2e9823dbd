"""The manifest a distilled or pruned student carries (``tokenomy.json``, ``kind:
distill``): its teacher (path + content hash), the layers removed with their scores, the
tokens it was trained on, its loss curve and objective. ``train`` reads the student's
manifest and carries it forward, so a pruned-then-distilled model tells its whole story."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from tokenomy.compress.artifact import MANIFEST, now, tool_versions
from tokenomy.errors import InvalidInputError

KIND = "distill"


class Teacher(BaseModel):
    path: str
    sha256: str
    layers: int
    gguf: str | None = None  # the GGUF the teacher was read from: the student's tokenizer


class RemovedLayer(BaseModel):
    index: int  # in the teacher's numbering
    kld_alone: float  # mean KLD vs the teacher when only this block is removed
    kld_after: float  # mean KLD vs the teacher once it and those before it are removed
    block_influence: float  # 1 - cos(block input, block output), mean over tokens
    angular_distance: float  # arccos(cos(in, out)) / pi, mean over tokens


class TrainRun(BaseModel):
    objective: str  # 'kd' (forward KL on the teacher's top-k) or 'ce'
    tokens: int
    seconds: float
    dataset: str
    config: dict
    loss_curve: list[tuple[int, float]]  # (tokens seen in this run, mean loss since the last)


class DistillManifest(BaseModel):
    kind: str = KIND
    schema_version: int = 1
    created_at: str
    teacher: Teacher
    layers: int
    layers_removed: list[RemovedLayer] = []
    calibration: dict = {}  # how the layers were ranked
    tokens_seen: int = 0
    objective: str | None = None  # of the latest run
    runs: list[TrainRun] = []
    tool_versions: dict[str, str] = {}


def read(directory: Path) -> DistillManifest | None:
    """The student's distill manifest, or None where it has none (any HF model)."""
    file = Path(directory) / MANIFEST
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{file} is not valid JSON: {e.msg}") from None
    if data.get("kind") != KIND:
        return None
    try:
        return DistillManifest.model_validate(data)
    except ValueError as e:
        raise InvalidInputError(f"{file} is not a valid distill manifest: {e}") from None


def write(directory: Path, manifest: DistillManifest) -> None:
    manifest.created_at = now()
    manifest.tool_versions = tool_versions()
    (Path(directory) / MANIFEST).write_text(manifest.model_dump_json(indent=2))
