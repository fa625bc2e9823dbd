"""llama.cpp's importance-matrix files, read and written: the same structure `stats`
computes (GGUF tensor name -> mean squared input activation per column, float32 [in]).

Two formats, as llama.cpp's tools/imatrix/imatrix.cpp writes them and
tools/quantize reads them:

- GGUF (``llama-imatrix`` default): ``general.type = "imatrix"``, keys
  ``imatrix.datasets`` / ``imatrix.chunk_count`` / ``imatrix.chunk_size``, and per weight
  ``<name>.in_sum2`` (sums of squared inputs, ne [in, n_mat]) and ``<name>.counts``
  (tokens, ne [1, n_mat]); the value is in_sum2 / counts (1 where a count is 0).
- legacy ``.dat``: int32 n_entries; per entry int32 name length, the name, int32 ncall,
  int32 nval, float32[nval] (mean * ncall); then optionally int32 last_call, int32 length
  and the dataset name. The value is stored / ncall.

An imatrix is checked against the model before anything is written: every name must be
one of the model's tensors, every vector as long as that tensor's input width, and every
block weight (``blk.N.attn_*``/``ffn_*``) covered; otherwise it was made for another model.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenomy.errors import InvalidInputError

_BLOCK_WEIGHT = re.compile(r"blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight")
_REMEDY = ("Rebuild it with llama-imatrix on this model, or drop --imatrix and tokenomy "
           "computes one.")


@dataclass
class Imatrix:
    importance: dict[str, np.ndarray]  # GGUF name -> mean squared input activation [in]
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0  # calibration chunks (llama-imatrix: n_ctx windows) behind it
    chunk_size: int = 0  # tokens per chunk (0: not recorded, as in the .dat format)
    path: str = ""  # the file it was read from ("" when computed by tokenomy)
    sha256: str = ""
    format: str = "computed"  # "gguf" | "dat" | "computed"

    def provenance(self) -> dict:
        """What the manifest records about a user's file."""
        return {"path": self.path, "sha256": self.sha256, "format": self.format,
                "entries": len(self.importance), "datasets": self.datasets,
                "chunks": self.chunks, "chunk_size": self.chunk_size}


def read_imatrix(path: str | Path) -> Imatrix:
    """Either format, told apart by the GGUF magic; one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"--imatrix {path}: no such file.")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    imatrix = _read_gguf(path) if data[:4] == b"GGUF" else _read_dat(path, data)
    for name, values in imatrix.importance.items():
        if not np.isfinite(values).all() or (values < 0).any():
            raise InvalidInputError(f"--imatrix {path}: {name} has negative or non-finite "
                                    "values; it is not a usable importance matrix.")
    imatrix.path, imatrix.sha256 = str(path.resolve()), sha
    return imatrix


def _not_imatrix(path: Path, why: str) -> InvalidInputError:
    return InvalidInputError(
        f"--imatrix {path} is not an importance matrix ({why}); pass a file made by "
        "llama-imatrix (.gguf or legacy .dat), or drop --imatrix and tokenomy computes one.")


def _read_gguf(path: Path) -> Imatrix:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError, struct.error) as e:
        raise _not_imatrix(path, f"an unreadable GGUF file: {e}") from e
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[:-len(".in_sum2")]] = np.asarray(t.data, np.float32)
        elif t.name.endswith(".counts"):
            counts[t.name[:-len(".counts")]] = np.asarray(t.data, np.float32).reshape(-1)
    if not sums:
        kind = _field(reader, "general.type") or "model"
        raise _not_imatrix(path, f"a GGUF {kind} file with no <tensor>.in_sum2 tensors; "
                                 "is it the model itself?")
    unpaired = sorted(set(sums) ^ set(counts))
    if unpaired:
        raise _not_imatrix(path, f"{unpaired[0]} has in_sum2 without counts or the reverse")
    importance = {}
    for name, s in sums.items():
        s = s.reshape(len(counts[name]), -1)  # [n_mat, in]
        c = counts[name][:, None]
        importance[name] = np.where(c > 0, s / np.where(c > 0, c, 1), 1).reshape(-1).astype(
            np.float32)
    datasets = _field(reader, "imatrix.datasets")
    return Imatrix(importance, datasets=list(datasets or []),
                   chunks=int(_field(reader, "imatrix.chunk_count") or 0),
                   chunk_size=int(_field(reader, "imatrix.chunk_size") or 0), format="gguf")


def _field(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


class _Cursor:
    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.at = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise _not_imatrix(self.path, f"it ends inside {what}")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def int32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    @property
    def left(self) -> int:
        return len(self.data) - self.at


def _read_dat(path: Path, data: bytes) -> Imatrix:
    cur = _Cursor(path, data)
    n_entries = cur.int32("the entry count")
    if not 1 <= n_entries <= 1_000_000:
        raise _not_imatrix(path, f"it starts with {n_entries} entries")
    importance, ncalls = {}, []
    for i in range(n_entries):
        length = cur.int32(f"entry {i + 1}'s name length")
        if not 1 <= length <= 4096:
            raise _not_imatrix(path, f"entry {i + 1} has a name of {length} bytes")
        try:
            name = cur.take(length, f"entry {i + 1}'s name").decode()
        except UnicodeDecodeError as e:
            raise _not_imatrix(path, f"entry {i + 1}'s name is not text") from e
        ncall, nval = cur.int32(f"{name}'s ncall"), cur.int32(f"{name}'s nval")
        if not 1 <= nval <= 1 << 28:
            raise _not_imatrix(path, f"{name} has {nval} values")
        values = np.frombuffer(cur.take(4 * nval, f"{name}'s values"), "<f4")
        importance[name] = (values / np.float32(ncall) if ncall > 0 else values).astype(
            np.float32)
        ncalls.append(ncall)
    chunks, datasets = max(ncalls), []
    if cur.left >= 4:
        chunks = cur.int32("last_call")
    if cur.left >= 4:
        length = cur.int32("the dataset name length")
        datasets = [cur.take(length, "the dataset name").decode(errors="replace")]
    if cur.left:
        raise _not_imatrix(path, f"{cur.left} bytes follow the last entry")
    return Imatrix(importance, datasets=datasets, chunks=chunks, format="dat")


# -- against the model -----------------------------------------------------------------

def gguf_widths(gguf_path: Path) -> dict[str, int]:
    """Tensor name -> the imatrix length llama.cpp expects (ne0, times experts if 3-D)."""
    from gguf import GGUFReader

    ne = {t.name: [int(n) for n in t.shape.tolist()] for t in GGUFReader(str(gguf_path)).tensors}
    return {name: dims[0] * int(np.prod(dims[2:], dtype=np.int64)) for name, dims in ne.items()
            if len(dims) >= 2}


def check_fits(imatrix: Imatrix, widths: dict[str, int], model: str) -> None:
    """Refuse an imatrix made for another model: unknown names, other lengths, block
    weights it does not cover. `widths`: tensor name -> input width of `model`."""
    where = f"--imatrix {Path(imatrix.path).name}"
    unknown = sorted(set(imatrix.importance) - set(widths))
    if unknown:
        raise InvalidInputError(
            f"{where} was made for another model: {len(unknown)} of its "
            f"{len(imatrix.importance)} tensors are not in {model} (first: {unknown[0]}). "
            + _REMEDY)
    for name, values in imatrix.importance.items():
        if len(values) != widths[name]:
            raise InvalidInputError(
                f"{where} was made for another model: {name} has {len(values)} values, "
                f"{model}'s {name} has input width {widths[name]}. " + _REMEDY)
    missing = sorted(n for n in widths if _BLOCK_WEIGHT.fullmatch(n)
                     and n not in imatrix.importance)
    if missing:
        raise InvalidInputError(
            f"{where} was made for another model: it has no entry for {len(missing)} of "
            f"{model}'s block weights (first: {missing[0]}). " + _REMEDY)


def load_for(path: str | Path, gguf_path: Path) -> Imatrix:
    """Read `path` and check it against the GGUF model at `gguf_path`."""
    imatrix = read_imatrix(path)
    check_fits(imatrix, gguf_widths(gguf_path), gguf_path.name)
    return imatrix


# -- writing ---------------------------------------------------------------------------

def write_imatrix(path: str | Path, imatrix: Imatrix) -> Path:
    """`path` ending in .dat: the legacy format; anything else: GGUF (llama-imatrix's
    default). Either loads in llama-quantize --imatrix. Never overwrites."""
    path = Path(path)
    if path.exists():
        raise InvalidInputError(f"{path} already exists; tokenomy never overwrites.")
    if not path.parent.is_dir():
        raise InvalidInputError(f"{path.parent} is not a directory.")
    partial = path.with_name(f".{path.name}.partial")
    try:
        (_write_dat if path.suffix == ".dat" else _write_gguf)(partial, imatrix)
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write_dat(path: Path, imatrix: Imatrix) -> None:
    ncall = max(imatrix.chunks, 1)
    with path.open("wb") as f:
        f.write(struct.pack("<i", len(imatrix.importance)))
        for name in sorted(imatrix.importance):
            values = np.asarray(imatrix.importance[name], np.float32)
            encoded = name.encode()
            f.write(struct.pack("<i", len(encoded)) + encoded)
            f.write(struct.pack("<ii", ncall, len(values)))
            f.write((values * np.float32(ncall)).astype("<f4").tobytes())
        dataset = (imatrix.datasets[-1] if imatrix.datasets else "").encode()
        f.write(struct.pack("<ii", ncall, len(dataset)) + dataset)


def _write_gguf(path: Path, imatrix: Imatrix) -> None:
    from gguf import GGUFWriter, Keys

    count = np.float32(max(imatrix.chunks * imatrix.chunk_size, 1))  # tokens behind it
    writer = GGUFWriter(str(path), "imatrix")
    writer.kv_data[0].pop(Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
    writer.add_type("imatrix")
    writer.add_array(Keys.IMatrix.DATASETS, list(imatrix.datasets) or [""])
    writer.add_uint32(Keys.IMatrix.CHUNK_COUNT, imatrix.chunks)
    writer.add_uint32(Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
    for name in sorted(imatrix.importance):
        values = np.asarray(imatrix.importance[name], np.float32)
        writer.add_tensor(f"{name}.in_sum2", (values * count)[None, :])  # ne [in, 1]
        writer.add_tensor(f"{name}.counts", np.full((1, 1), count, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
