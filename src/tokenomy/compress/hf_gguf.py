"""A Hugging Face llama-family directory (a distilled or pruned student) as an F16 GGUF,
so the llama.cpp schemes, `--scheme auto` and the CPU engines take it like any model.

The tokenizer and every other metadata key come from a GGUF *template*: the GGUF the
model was made from (a student's manifest names its teacher's). Rebuilding a llama.cpp
tokenizer from tokenizer.json needs llama.cpp's pre-tokenizer table; copying it from the
file the student shares its vocabulary with is exact. Weights: 2-D tensors F16, norms
F32; attention q/k rows put back in llama.cpp's rotary order (the inverse of what
transformers' GGUF loader does). Converted once per content hash, in the models cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tokenomy.errors import InvalidInputError
from tokenomy.sources import ModelSource, content_hash

ARCHITECTURES = {"LlamaForCausalLM": "llama"}


def template_for(source: ModelSource) -> Path | None:
    """The GGUF `source`'s tokenizer and metadata come from: its distill manifest's
    teacher GGUF, where it has one and the file is still there."""
    from tokenomy.distill import manifest as M

    made = M.read(source.path)
    if made is None or not made.teacher.gguf:
        return None
    path = Path(made.teacher.gguf)
    return path if path.is_file() else None


def backend_input(source: ModelSource, backend: str, step=None) -> ModelSource:
    """What a scheme's backend reads: the llama.cpp schemes take a student (HF directory
    of a GGUF teacher) as its F16 GGUF; everything else takes `source` as it is."""
    if backend in ("gguf", "auto-gguf") and source.kind == "hf":
        return gguf_source(source, step)
    return source


def gguf_source(source: ModelSource, step=None) -> ModelSource:
    """`source` as a GGUF: itself when it is one, else its F16 conversion (cached)."""
    from tokenomy.home import cache_dir

    if source.kind == "gguf":
        return source
    template = template_for(source) if source.kind == "hf" else None
    if template is None:
        raise InvalidInputError(
            f"{source.path} is a Hugging Face directory with no GGUF to take its tokenizer "
            "from (tokenomy converts students of a GGUF teacher). Convert it with llama.cpp's "
            "convert_hf_to_gguf.py (F16), then pass the .gguf file.")
    target = cache_dir("models") / f"{source.path.name}-{content_hash(source)[:16]}.f16.gguf"
    if not target.is_file():
        (step or (lambda _m: None))(f"converting {source.path.name} to an F16 GGUF")
        partial = target.with_name(target.name + ".partial")
        try:
            write_f16(source.path, template, partial)
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)
    return ModelSource("gguf", target, source.name)


def _config(directory: Path) -> dict:
    config = json.loads((directory / "config.json").read_text())
    archs = config.get("architectures") or []
    if not any(a in ARCHITECTURES for a in archs):
        raise InvalidInputError(
            f"{directory} is a {', '.join(archs) or 'model of unknown architecture'}; "
            f"tokenomy writes GGUF for {', '.join(ARCHITECTURES)} only. Use llama.cpp's "
            "convert_hf_to_gguf.py.")
    return config


def _rotary_order(w: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from transformers' half-split rotary layout to llama.cpp's interleaved one:
    per head, row pairs (i, i + d/2) become neighbours."""
    rows = w.shape[0]
    half = rows // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_template(reader, config: dict, template: Path) -> str:
    arch = reader.fields["general.architecture"].contents()
    f = reader.fields
    want = {"embedding_length": config["hidden_size"],
            "attention.head_count": config["num_attention_heads"],
            "attention.head_count_kv": config.get("num_key_value_heads",
                                                  config["num_attention_heads"])}
    for key, value in want.items():
        field = f.get(f"{arch}.{key}")
        if field is not None and int(field.contents()) != int(value):
            raise InvalidInputError(
                f"{template.name} ({arch}.{key} {field.contents()}) is not the model this "
                f"student was made from ({key} {value}); its tokenizer cannot be reused.")
    tokens = len(f["tokenizer.ggml.tokens"].contents()) if "tokenizer.ggml.tokens" in f else 0
    if tokens != config["vocab_size"]:
        raise InvalidInputError(
            f"{template.name} has {tokens} tokens and the student {config['vocab_size']}: "
            "not the same vocabulary, so its tokenizer cannot be reused.")
    return arch


def write_f16(directory: Path, template: Path, output: Path) -> None:
    """Write `directory`'s weights as an F16 GGUF with `template`'s metadata."""
    import gguf
    from safetensors import safe_open

    from tokenomy.compress.auto.writer import copy_metadata

    config = _config(directory)
    reader = gguf.GGUFReader(str(template))
    arch = _check_template(reader, config, template)
    layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    writer = gguf.GGUFWriter(str(output), arch)
    copy_metadata(reader, writer, int(gguf.LlamaFileType.MOSTLY_F16),
                  {f"{arch}.block_count": layers, "general.name": directory.name})
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise InvalidInputError(f"{directory} has no .safetensors weights to convert.")
    tied = bool(config.get("tie_word_embeddings"))
    for file in files:
        with safe_open(str(file), "np" if _plain(file) else "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if tied and key == "lm_head.weight":
                    continue  # the embedding is the output layer too
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise InvalidInputError(f"{file.name}: no GGUF name for tensor {key}; "
                                            "not a llama-family checkpoint tokenomy converts.")
                w = _array(f.get_tensor(key))
                if name.endswith("attn_q.weight"):
                    w = _rotary_order(w, heads)
                elif name.endswith("attn_k.weight"):
                    w = _rotary_order(w, kv_heads)
                writer.add_tensor(name, w.astype(np.float16 if w.ndim == 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _plain(file: Path) -> bool:
    """Whether numpy can read every tensor (no bfloat16)."""
    with file.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return all(t.get("dtype") != "BF16" for k, t in header.items() if k != "__metadata__")


def _array(t) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t.astype(np.float32)
    return t.float().numpy()
