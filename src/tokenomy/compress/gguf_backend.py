"""GGUF backend: llama.cpp's own quantizer (``llama_model_quantize``) through
llama-cpp-python, and loading GGUF files safely on this CPU."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path

from tokenomy.capability import usable_cores
from tokenomy.compress.schemes import CompressScheme
from tokenomy.errors import InvalidInputError, TokenomyError


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise InvalidInputError(
            "GGUF schemes need llama-cpp-python: pip install 'tokenomy[gguf]' "
            "(or `make install`)."
        ) from e
    return llama_cpp


@contextlib.contextmanager
def _captured_stderr(sink: list[str]):
    """Capture llama.cpp's log: C code writes to fd 2, and llama-cpp-python's log callback
    prints to Python's sys.stderr, which is not fd 2 under pytest, click's CliRunner or a
    notebook."""
    python_side = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp, contextlib.redirect_stderr(python_side):
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace") + python_side.getvalue())


def quantize(source_gguf: Path, scheme: CompressScheme, output: Path) -> tuple[dict, str]:
    """Requantize `source_gguf` to the scheme's file type; returns the parameters used
    and llama.cpp's note on tensors it had to store in another type (or '')."""
    llama_cpp = _llama_cpp()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{scheme.gguf_type}", None)
    if ftype is None:
        raise InvalidInputError(f"this llama.cpp build has no file type {scheme.gguf_type}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True  # the source may itself be quantized (e.g. Q4_1)
    params.nthread = usable_cores()
    log: list[str] = []
    with _captured_stderr(log):
        rc = llama_cpp.llama_model_quantize(str(source_gguf).encode(), str(output).encode(),
                                            params)
    if rc != 0 or not output.is_file():
        tail = "\n".join(log[0].splitlines()[-5:]) if log else ""
        raise TokenomyError(f"llama.cpp failed to quantize {source_gguf} to {scheme.gguf_type} "
                            f"(return code {rc}):\n{tail}")
    fallback = re.search(r"(\d+ of \d+ tensor\(s\)) required fallback", log[0] if log else "")
    used = {"ftype": scheme.gguf_type, "allow_requantize": True, "nthread": params.nthread,
            "tool": "llama_model_quantize"}
    return used, fallback.group(1) if fallback else ""


@contextlib.contextmanager
def _no_extra_buffer_types():
    """llama.cpp's CPU weight repacking (extra buffer types) segfaults on AMX CPUs seen
    here; llama-cpp-python does not expose the switch, so set it in the default params."""
    import llama_cpp.llama_cpp as C

    original = C.llama_model_default_params

    def patched():
        params = original()
        params.use_extra_bufts = False
        return params

    C.llama_model_default_params = patched
    try:
        yield
    finally:
        C.llama_model_default_params = original


def load_llama(path: Path, n_ctx: int = 512, logits_all: bool = False):
    """A llama_cpp.Llama on CPU with all cores, quietly."""
    llama_cpp = _llama_cpp()
    with _no_extra_buffer_types():
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False,
                               n_threads=usable_cores(), n_gpu_layers=0)
