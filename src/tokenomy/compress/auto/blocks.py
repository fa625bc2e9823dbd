"""llama.cpp's 32-element block types in numpy, byte for byte: Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0 (and F16), with an importance-weighted scale search.

A 2-D weight ``[rows, cols]`` (GGUF stores it as ne = [cols, rows]) is cut into blocks of
32 consecutive elements along each row, i.e. along the input dimension. Plain
round-to-nearest (``importance=None``) reproduces ``gguf.quants.quantize`` exactly (a test
pins it). With an importance vector (one value per input column: the mean squared
activation, llama.cpp's imatrix) each block tries a few scales around the RTN one, refits
the scale (and minimum) by weighted least squares for the codes it gets, and keeps the one
with the smallest ``sum w * (x - q)^2``, where ``w = imp * sqrt(sigma2 + x^2)`` as in
llama.cpp's ``quantize_q4_0`` with an imatrix. Dequantization is gguf's own.
"""

from __future__ import annotations

import numpy as np

from tokenomy.errors import InvalidInputError

BLOCK = 32
BLOCK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
TYPES = (*BLOCK_TYPES, "F16")
# bytes per block of 32: f16 scale (+ f16 min) (+ 4 bytes of high bits) + packed codes
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}
_LEVELS = {"Q4_0": 8, "Q5_0": 16, "Q4_1": 15, "Q5_1": 31, "Q8_0": 127}
_SCALE_STEPS = np.array([0.85, 0.9, 0.95, 1.0, 1.05], dtype=np.float32)
_SHRINK = ((0.0, 0.0), (0.04, 0.0), (0.0, 0.04), (0.04, 0.04), (0.08, 0.08))
_CHUNK = 1 << 16  # blocks per vectorized step


def bits_per_weight(qtype: str) -> float:
    return 16.0 if qtype == "F16" else _BLOCK_BYTES[qtype] * 8 / BLOCK


def tensor_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    n = int(np.prod(shape))
    return 2 * n if qtype == "F16" else n // BLOCK * _BLOCK_BYTES[qtype]


def fits(qtype: str, cols: int) -> bool:
    return qtype == "F16" or cols % BLOCK == 0


def ggml_type(qtype: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[qtype]


# -- codes and packing (gguf.quants' arithmetic, so RTN is byte-identical) -----------


def _codes(qtype: str, x: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    # x: [N, 32] float32, d/m: [N, 1] float32 -> integer codes [N, 32] as stored
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, 0, 1 / d).astype(np.float32)
    if qtype == "Q8_0":
        from gguf.quants import np_roundf

        return np_roundf(x * inv).clip(-127, 127)
    if qtype in ("Q4_1", "Q5_1"):
        top = 15 if qtype == "Q4_1" else 31
        return np.trunc((x - m) * inv + np.float32(0.5), dtype=np.float32).clip(0, top)
    offset, top = (8.5, 15) if qtype == "Q4_0" else (16.5, 31)
    return np.trunc(x * inv + np.float32(offset), dtype=np.float32).clip(0, top)


def _pack(qtype: str, q: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    n = q.shape[0]
    head = [d.astype(np.float16).view(np.uint8)]
    if m is not None:
        head.append(m.astype(np.float16).view(np.uint8))
    if qtype == "Q8_0":
        return np.concatenate([*head, q.astype(np.int8).view(np.uint8)], axis=-1)
    q = q.astype(np.uint8)
    halves = q.reshape(n, 2, BLOCK // 2)
    low = (halves[:, 0, :] & np.uint8(0x0F)) | (halves[:, 1, :] << np.uint8(4))
    if qtype in ("Q5_0", "Q5_1"):
        qh = np.packbits(q.reshape(n, 1, BLOCK) >> np.uint8(4), axis=-1,
                         bitorder="little").reshape(n, 4)
        head.append(qh)
    return np.concatenate([*head, low], axis=-1)


def _values(qtype: str, q: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """What llama.cpp reconstructs from codes and f16-rounded scale (and min)."""
    d16 = d.astype(np.float16).astype(np.float32)
    if m is not None:
        return d16 * q + m.astype(np.float16).astype(np.float32)
    shift = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 0}[qtype]
    return d16 * (q - shift)


def _rtn_params(qtype: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if qtype in ("Q4_1", "Q5_1"):
        lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        return (hi - lo) / _LEVELS[qtype], lo
    if qtype == "Q8_0":
        return np.abs(x).max(axis=1, keepdims=True) / 127, None
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=-1, keepdims=True), axis=-1)
    return peak / -_LEVELS[qtype], None


# -- importance-weighted search ------------------------------------------------------


def _refit(qtype: str, x, w, q, d, m):
    """Weighted least squares of the scale (and min) for fixed codes."""
    if m is None:
        shift = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 0}[qtype]
        k = q - shift
        den = (w * k * k).sum(-1, keepdims=True)
        fit = np.where(den > 0, (w * k * x).sum(-1, keepdims=True) / np.maximum(den, 1e-30), d)
        return fit.astype(np.float32), None
    def total(a):
        return a.sum(-1, keepdims=True)

    sw, sq, sx, sqq, sqx = total(w), total(w * q), total(w * x), total(w * q * q), total(w * q * x)
    det = sw * sqq - sq * sq
    ok = det > 1e-12 * np.maximum(sw * sqq, 1e-30)
    safe = np.where(ok, det, 1)
    d_fit = np.where(ok, (sw * sqx - sq * sx) / safe, d)
    m_fit = np.where(ok, (sqq * sx - sq * sqx) / safe, m)
    return d_fit.astype(np.float32), m_fit.astype(np.float32)


def _candidates(qtype: str, x: np.ndarray):
    d0, m0 = _rtn_params(qtype, x)
    if m0 is None:
        for s in _SCALE_STEPS:
            yield d0 * s, None
        return
    lo, hi = m0, m0 + d0 * _LEVELS[qtype]
    for a, b in _SHRINK:
        span = hi - lo
        new_lo, new_hi = lo + a * span, hi - b * span
        yield (new_hi - new_lo) / _LEVELS[qtype], new_lo


def _search(qtype: str, x: np.ndarray, w: np.ndarray):
    """Per block, the (d, m) among RTN, the candidates and their refits with the least
    weighted error."""
    d_best, m_best = _rtn_params(qtype, x)
    err_best = (w * (x - _values(qtype, _codes(qtype, x, d_best, m_best), d_best, m_best))
                ** 2).sum(-1, keepdims=True)
    for d, m in _candidates(qtype, x):
        q = _codes(qtype, x, d, m)
        for dd, mm in ((d, m), _refit(qtype, x, w, q, d, m)):
            q2 = _codes(qtype, x, dd, mm)
            err = (w * (x - _values(qtype, q2, dd, mm)) ** 2).sum(-1, keepdims=True)
            better = err < err_best
            err_best = np.where(better, err, err_best)
            d_best = np.where(better, dd, d_best)
            if m_best is not None:
                m_best = np.where(better, mm, m_best)
    return d_best, m_best


# -- public --------------------------------------------------------------------------


def quantize(weight: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> np.ndarray:
    """Pack `weight` [rows, cols] into llama.cpp's bytes for `qtype`: uint8 [rows, bytes]
    (F16: float16 [rows, cols]). `importance` [cols]: mean squared input activation."""
    w2 = np.ascontiguousarray(weight, dtype=np.float32)
    if w2.ndim != 2:
        raise InvalidInputError(f"only 2-D weights take a block type; got shape {w2.shape}.")
    rows, cols = w2.shape
    if qtype == "F16":
        return w2.astype(np.float16)
    if qtype not in _BLOCK_BYTES:
        raise InvalidInputError(f"unknown block type {qtype!r}; one of {', '.join(TYPES)}.")
    if cols % BLOCK:
        raise InvalidInputError(f"{qtype} needs rows that are a multiple of {BLOCK}; "
                                f"this tensor's rows are {cols} wide.")
    if importance is not None and importance.shape != (cols,):
        raise InvalidInputError(f"importance has {importance.shape} values for a tensor "
                                f"{cols} wide: it comes from another model.")
    x = w2.reshape(-1, BLOCK)
    imp = None if importance is None else np.tile(
        np.asarray(importance, np.float32).reshape(-1, BLOCK), (rows, 1))
    out = np.empty((x.shape[0], _BLOCK_BYTES[qtype]), dtype=np.uint8)
    for start in range(0, x.shape[0], _CHUNK):
        xb = x[start:start + _CHUNK]
        if imp is None or qtype == "Q8_0":  # llama.cpp's Q8_0 takes no imatrix either
            d, m = _rtn_params(qtype, xb)
        else:
            sigma2 = (xb * xb).mean(-1, keepdims=True)
            wb = imp[start:start + _CHUNK] * np.sqrt(sigma2 + xb * xb)
            d, m = _search(qtype, xb, wb)
        out[start:start + _CHUNK] = _pack(qtype, _codes(qtype, xb, d, m), d, m)
    return out.reshape(rows, -1)


def dequantize(packed: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    from gguf.quants import dequantize as gguf_dequantize

    if qtype == "F16":
        return packed.astype(np.float32).reshape(shape)
    return gguf_dequantize(packed, ggml_type(qtype)).reshape(shape).astype(np.float32)


def round_trip(weight: np.ndarray, qtype: str, importance: np.ndarray | None = None
               ) -> np.ndarray:
    """`weight` as llama.cpp will compute with it after quantizing to `qtype`."""
    return dequantize(quantize(weight, qtype, importance), qtype, weight.shape)
