"""Write a GGUF with a type per tensor: every metadata key copied from the source,
``general.file_type`` set to the dominant type (by bytes), tensors not allocated (1-D
norms, anything unknown) copied byte for byte, the allocated ones dequantized from the
source and quantized by `blocks` (importance-weighted when given)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from tokenomy.compress.auto import blocks
from tokenomy.errors import InvalidInputError

_FILE_TYPE = {"F16": "MOSTLY_F16", "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1",
              "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1", "Q8_0": "MOSTLY_Q8_0"}


def source_tensors(path: Path) -> dict[str, tuple[str, int]]:
    """tensor name -> (type name, bytes) of a GGUF file."""
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in GGUFReader(str(path)).tensors}


def other_bytes(path: Path, allocated: set[str]) -> int:
    """The bytes of a GGUF file that an allocation does not change (header, metadata,
    tensors outside it, padding)."""
    moved = sum(n for name, (_, n) in source_tensors(path).items() if name in allocated)
    return path.stat().st_size - moved


def dequantized(tensor) -> np.ndarray:
    """A reader tensor as float32 [rows, cols] (GGUF ne reversed)."""
    from gguf.quants import dequantize

    rows_cols = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    return dequantize(tensor.data, tensor.tensor_type).reshape(rows_cols).astype(np.float32)


def copy_metadata(reader, writer, file_type: int, overrides: dict | None = None) -> None:
    """Every key of `reader` into `writer`, `general.file_type` set and `overrides` (key ->
    value, of the key's own type) replacing theirs."""
    from gguf import GGUFValueType

    overrides = overrides or {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if field.name == "general.file_type":
            writer.add_uint32(field.name, file_type)
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, overrides.get(field.name, field.contents()), vtype,
                             sub_type=sub)


def write_mixed(source: Path, output: Path, types: dict[str, str],
                importance: dict[str, np.ndarray] | None = None, step=None,
                memo: dict | None = None) -> dict[str, str]:
    """Write `output` from the GGUF `source` with `types` (tensor name -> type); returns
    every tensor's type as written. `memo`: a dict kept across calls with the same source
    and importance, so each (tensor, type) is quantized once (a frontier sweep)."""
    from gguf import GGUFReader, GGUFWriter, LlamaFileType

    step = step or (lambda _msg: None)
    reader = GGUFReader(str(source))
    names = {t.name for t in reader.tensors}
    missing = sorted(set(types) - names)
    if missing:
        raise InvalidInputError(f"{source.name} has no tensor(s) {missing[:3]}: the "
                                "allocation was made for another model.")
    arch = reader.fields["general.architecture"].contents()
    by_bytes = Counter()
    for t in reader.tensors:
        if t.name in types:
            by_bytes[types[t.name]] += blocks.tensor_bytes(types[t.name], _rows_cols(t))
    dominant = by_bytes.most_common(1)[0][0] if by_bytes else "F16"
    writer = GGUFWriter(str(output), arch)
    copy_metadata(reader, writer, int(LlamaFileType[_FILE_TYPE[dominant]]))
    written = {}
    for i, t in enumerate(reader.tensors):
        qtype = types.get(t.name)
        if qtype is None:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
            written[t.name] = t.tensor_type.name
            continue
        step(f"quantizing {t.name} -> {qtype} ({i + 1}/{len(reader.tensors)})")
        imp = None if importance is None or qtype == "F16" else importance.get(t.name)
        packed = None if memo is None else memo.get((t.name, qtype))
        if packed is None:
            packed = blocks.quantize(dequantized(t), qtype, imp)
            if memo is not None:
                memo[t.name, qtype] = packed
        writer.add_tensor(t.name, packed, raw_dtype=blocks.ggml_type(qtype))
        written[t.name] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def _rows_cols(tensor) -> tuple[int, int]:
    shape = [int(n) for n in reversed(tensor.shape.tolist())]
    return (int(np.prod(shape[:-1])), shape[-1])
