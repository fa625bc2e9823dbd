"""ModelSpec from a GGUF file's metadata (memory-mapped; no weights are read)."""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from tokenomy.errors import ModelSpecError
from tokenomy.modelspec import Attention, ModelSpec, MoE

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9


class GgufHeader(NamedTuple):
    meta: dict[str, Any]  # key -> value; a string array not decoded is its length
    tensors: dict[str, tuple[tuple[int, ...], int, int]]  # name -> (dims, ggml type, offset)
    data_start: int  # where the tensor data begins


def read_gguf_header(path: Path, decode: Callable[[str], bool] = lambda _key: True
                     ) -> GgufHeader:
    """The metadata and tensor table of a GGUF file, parsed straight from its header
    (milliseconds; gguf's GGUFReader takes seconds over a 50k-token vocabulary). String
    arrays whose key `decode` refuses (a vocabulary, merges) come back as their length.
    Raises ValueError for anything that is not a well-formed GGUF v2/v3 header."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            values = struct.unpack_from("<" + fmt, m, pos)
            pos += struct.calcsize("<" + fmt)
            return values[0] if len(values) == 1 else values

        def text() -> str:
            nonlocal pos
            n = take("Q")
            if pos + n > len(m):
                raise ValueError("a string runs past the end of the file")
            pos += n
            return m[pos - n:pos].decode("utf-8", "replace")

        def skip_text() -> None:
            nonlocal pos
            n = take("Q")  # first: `pos += take(...)` would read pos before take moves it
            pos += n

        def value(kind: int, wanted: bool):
            if kind == _STRING:
                return text()
            if kind != _ARRAY:
                return take(_SCALARS[kind])
            item, n = take("IQ")
            if item == _STRING:
                if wanted:
                    return [text() for _ in range(n)]
                for _ in range(n):
                    skip_text()
                return n
            return list(take(f"{n}{_SCALARS[item]}")) if n else []

        if take("4s") != b"GGUF":
            raise ValueError("no GGUF magic")
        version, n_tensors, n_kv = take("IQQ")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (this reader knows 2 and 3)")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = text()
            meta[key] = value(take("I"), decode(key))
        tensors = {}
        for _ in range(n_tensors):
            name = text()
            dims = take(f"{take('I')}Q")
            dims = dims if isinstance(dims, tuple) else (dims,)
            tensors[name] = (dims, *take("IQ"))
        align = int(meta.get("general.alignment", 32))
        return GgufHeader(meta, tensors, -(-pos // align) * align)


def check_tensor_data(path: Path, header: GgufHeader) -> None:
    """Every tensor's bytes lie inside the file (a truncated download fails here)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    for name, (dims, kind, offset) in header.tensors.items():
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        end = header.data_start + offset + math.prod(dims) // block * type_size
        if end > size:
            raise ValueError(f"tensor {name} ends at byte {end:,}, past the file's {size:,}")


def read_gguf_metadata(path: Path) -> tuple[dict[str, Any], set[str]]:
    """(metadata key -> value, tensor names) of a GGUF file; the vocabulary as its size."""
    if not path.is_file():
        raise ModelSpecError(f"no GGUF file at {path}.")
    try:
        header = read_gguf_header(path, decode=lambda k: not k.startswith("tokenizer.ggml."))
    except (ValueError, OSError, struct.error, KeyError) as e:
        raise ModelSpecError(f"{path} is not a readable GGUF file ({e}).") from e
    meta = {k: v for k, v in header.meta.items()  # large tokenizer arrays are not needed
            if not k.startswith("tokenizer.ggml.") or k == "tokenizer.ggml.tokens"}
    return meta, set(header.tensors)


def spec_from_gguf(path: Path) -> ModelSpec:
    meta, tensors = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if not arch:
        raise ModelSpecError(f"{path}: GGUF metadata has no general.architecture.")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer arrays (e.g. OpenELM): take the first
            value = value[0] if value else default
        return value

    hidden, layers = get("embedding_length"), get("block_count")
    heads = get("attention.head_count")
    if not (hidden and layers and heads):
        raise ModelSpecError(
            f"{path}: GGUF metadata lacks {arch}.embedding_length / block_count / "
            "attention.head_count; tokenomy reads decoder-only transformer GGUFs."
        )
    vocab = get("vocab_size") or meta.get("tokenizer.ggml.tokens")
    kv_lora = get("attention.kv_lora_rank")
    if kv_lora:
        rope = get("rope.dimension_count")
        key_len = get("attention.key_length")
        attention = Attention(
            kind="mla",
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=key_len,
            q_lora_rank=get("attention.q_lora_rank") or None,
            kv_lora_rank=kv_lora,
            qk_nope_head_dim=key_len - rope,
            qk_rope_head_dim=rope,
            v_head_dim=get("attention.value_length"),
        )
    else:
        window = get("attention.sliding_window")
        attention = Attention(
            num_heads=heads,
            num_kv_heads=get("attention.head_count_kv", heads),
            head_dim=get("attention.key_length", hidden // heads),
            qkv_bias="blk.0.attn_q.bias" in tensors,
            sliding_window=window,
            full_attention_every=6 if (window and arch.startswith("gemma3")) else 1,
        )
    moe = None
    if (get("expert_count") or 0) > 1:
        moe = MoE(
            num_experts=get("expert_count"),
            experts_per_token=get("expert_used_count"),
            expert_intermediate_size=get("expert_feed_forward_length")
            or get("feed_forward_length"),
            shared_experts=get("expert_shared_count", 0),
            first_dense_layers=get("leading_dense_block_count", 0),
        )
    name = meta.get("general.name") or path.stem
    try:
        return ModelSpec(
            name=str(name),
            hidden_size=hidden,
            num_layers=layers,
            intermediate_size=get("feed_forward_length") or 4 * hidden,
            ffn_matrices=3 if "blk.0.ffn_gate.weight" in tensors or moe else 2,
            vocab_size=vocab,
            tie_embeddings="output.weight" not in tensors,
            max_context=get("context_length", 4096),
            attention=attention,
            moe=moe,
            origin=str(path),
        )
    except ValueError as e:
        raise ModelSpecError(f"{path}: inconsistent architecture in GGUF metadata: {e}") from e
