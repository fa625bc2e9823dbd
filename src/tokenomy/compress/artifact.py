"""The manifest every compressed model carries (``tokenomy.json``): where it came from,
how it was made, with what, and what it cost to make."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
from pathlib import Path

from pydantic import BaseModel

from tokenomy.compress.schemes import CompressScheme
from tokenomy.errors import InvalidInputError

MANIFEST = "tokenomy.json"
SCHEMA_VERSION = 1
_TOOLS = ("tokenomy", "torch", "transformers", "llmcompressor", "compressed-tensors",
          "llama_cpp_python", "gguf")


class SourceInfo(BaseModel):
    path: str
    kind: str
    name: str
    sha256: str
    size_bytes: int


class Calibration(BaseModel):
    dataset: str
    split: str
    samples: int
    max_seq_length: int
    seed: int
    tokens: int


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    created_at: str
    source: SourceInfo
    scheme: CompressScheme
    output_format: str
    recipe: str  # llm-compressor recipe YAML, or the llama.cpp quantize parameters
    group_size: int | None = None
    group_size_reason: str = ""
    calibration: Calibration | None = None
    tool_versions: dict[str, str]
    wall_time_s: float
    peak_rss_bytes: int  # this process's peak resident memory while compressing
    estimated_peak_bytes: int
    size_on_disk_bytes: int
    files: list[str]
    verified: str  # how the artifact was reloaded after writing
    notes: list[str] = []
    tensor_types: dict[str, str] = {}  # GGUF written by tokenomy: every tensor's type
    auto: dict | None = None  # --scheme auto: budget, predicted vs measured KLD, tries
    imatrix: dict | None = None  # --imatrix FILE: the user's file (path, sha256, format...)


def tool_versions() -> dict[str, str]:
    out = {}
    for name in _TOOLS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))


def read_manifest(directory: Path) -> Manifest | None:
    file = directory / MANIFEST
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        if isinstance(data, dict) and data.get("kind") == "distill":
            return None  # a distilled student's manifest (tokenomy.distill): a plain model
        return Manifest.model_validate(data)
    except (ValueError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"{file} is not a valid tokenomy manifest: {e}") from e


def dir_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
