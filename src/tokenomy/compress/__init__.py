"""`tokenomy.compress`: make a compressed model an inference engine loads, with a
manifest. Never writes over an existing directory or the source model; a failed job
leaves nothing behind."""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tokenomy.compress.artifact import (
    Calibration,
    Manifest,
    SourceInfo,
    dir_size,
    now,
    tool_versions,
    write_manifest,
)
from tokenomy.compress.budget import check_fits, estimate_peak_bytes
from tokenomy.compress.hf_gguf import backend_input
from tokenomy.compress.schemes import SCHEMES, CompressScheme, get_scheme
from tokenomy.errors import InvalidInputError, TokenomyError
from tokenomy.modelspec import ModelSpec
from tokenomy.sources import ModelSource, content_hash, resolve_source

__all__ = ["SCHEMES", "CompressScheme", "Manifest", "compress", "get_scheme"]

Step = Callable[[str], None]


def _check_output(output: Path, source: ModelSource) -> None:
    if output.exists():
        raise InvalidInputError(
            f"output {output} already exists; tokenomy never overwrites. Choose a new -o "
            "directory or remove the old one yourself."
        )
    src = source.directory.resolve()
    out = output.resolve()
    if out == src or src in out.parents:
        raise InvalidInputError(f"output {output} is inside the source model's directory {src}; "
                                "write the compressed model elsewhere.")


def _spec(source: ModelSource) -> ModelSpec:
    if source.kind == "openvino":
        raise InvalidInputError(f"{source.path} is an OpenVINO IR, compressed already; "
                                "compress the Hugging Face or GGUF model it came from.")
    if source.kind == "gguf":
        return ModelSpec.from_gguf(source.path)
    return ModelSpec.from_hf_config(source.path)


def compress(
    model: str | Path | None = None,
    scheme: str | CompressScheme = "w4a16",
    output: str | Path = "compressed",
    *,
    calibration: str = "sharegpt",
    calibration_samples: int = 64,
    max_seq_length: int = 512,
    seed: int = 0,
    step: Step | None = None,
    max_kld: float | None = None,
    size_mb: float | None = None,
    sensitivity=None,
    imatrix: str | Path | None = None,
    types: list[str] | None = None,
    max_kld_p99: float | None = None,
) -> Manifest:
    """Compress `model` (HF directory, GGUF file, or None for the embedded SmolLM2) with
    `scheme` into the new directory `output`; returns the manifest written beside it.
    `max_kld` / `size_mb`: the quality budget or the size for ``scheme="auto"``;
    `max_kld_p99`: a budget on the 99th percentile of KLD per token (with or without
    `max_kld`), met by measurement;
    `sensitivity`: its SensitivityConfig (default: `calibration` and `seed`, 16 x 256);
    `imatrix`: a llama-imatrix file (GGUF or .dat) for ``auto`` and the ``+imatrix``
    schemes, used instead of computing one; checked against the model before any work.
    `types`: the candidate types a budgeted scheme may choose from (default: all of them,
    e.g. ``["w4a16", "bf16"]`` for a checkpoint vLLM-CPU serves)."""
    step = step or (lambda _msg: None)
    scheme = scheme if isinstance(scheme, CompressScheme) else get_scheme(scheme)
    types = allowed_types(scheme, types)  # before the model is read
    source = resolve_source(model)
    output = Path(output)
    _check_output(output, source)
    original, source = source, backend_input(source, scheme.backend, step)
    if calibration_samples <= 0 or max_seq_length <= 0:
        raise InvalidInputError("--calibration-samples and --max-seq-length must be positive.")
    budgeted = (max_kld, max_kld_p99, size_mb)
    if any(v is not None for v in budgeted) and not scheme.budgeted:
        raise InvalidInputError("--max-kld, --max-kld-p99 and --size-mb choose --scheme "
                                f"auto's allocation; {scheme.name} has a fixed size. Drop "
                                "them or use auto.")
    if scheme.backend.startswith("auto-"):  # auto, auto:llmcompressor, the +imatrix ones
        from tokenomy.compress.auto import check_budget, check_request
        from tokenomy.compress.auto.budget import KldBudget

        budget = KldBudget(max_kld, max_kld_p99)
        if scheme.backend == "auto-gguf":
            check_request(scheme.name, source, budget, size_mb)
        else:
            check_budget(scheme.name, budget, size_mb)
    user_imatrix = _user_imatrix(imatrix, scheme, source)
    spec = _spec(source)
    estimate = estimate_peak_bytes(spec, scheme, source.size_bytes, calibration_samples,
                                   max_seq_length)
    check_fits(estimate)
    start = time.perf_counter()
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        step(f"hashing {original.path.name}")
        info = SourceInfo(path=str(original.path), kind=original.kind, name=original.name,
                          sha256=content_hash(original), size_bytes=original.size_bytes)
        if scheme.backend == "gguf":
            made = _gguf(source, scheme, partial, step)
        elif scheme.backend == "auto-gguf":
            made = _auto(source, scheme, partial, step, max_kld, size_mb,
                         sensitivity or _sensitivity_config(calibration, seed), user_imatrix,
                         types, max_kld_p99)
        elif scheme.backend == "auto-llmcompressor":
            from tokenomy.compress.auto.llmc import auto_llmcompressor

            made = auto_llmcompressor(source, partial, max_kld=max_kld, size_mb=size_mb,
                                      config=sensitivity, dataset=calibration, seed=seed,
                                      step=step, types=types, max_kld_p99=max_kld_p99)
        elif scheme.backend == "openvino":
            made = _openvino(source, scheme, spec, partial, step)
        else:
            made = _llmcompressor(source, scheme, partial, step, calibration,
                                  calibration_samples, max_seq_length, seed)
        manifest = Manifest(
            created_at=now(), source=info, scheme=scheme, output_format=scheme.output_format,
            tool_versions=tool_versions(), wall_time_s=round(time.perf_counter() - start, 2),
            peak_rss_bytes=_peak_rss(), estimated_peak_bytes=estimate,
            size_on_disk_bytes=dir_size(partial),
            files=sorted(p.name for p in partial.iterdir()), **made,
        )
        write_manifest(partial, manifest)
        partial.rename(output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _backend_failure(scheme: CompressScheme, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    needs_gpu = any(w in first.lower() for w in ("cuda", "accelerator", "gpu"))
    where = ("on this machine it needs a GPU (accelerator): run this scheme on a GPU "
             "machine; nothing was written" if needs_gpu else "nothing was written")
    return f"llm-compressor could not apply {scheme.name} to this model: {first} ({where})."


def _peak_rss() -> int:  # this process or the largest child (optimum-intel's export); KiB
    return max(resource.getrusage(who).ru_maxrss * 1024
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _openvino(source: ModelSource, scheme: CompressScheme, spec: ModelSpec, out: Path,
              step: Step) -> dict:
    from tokenomy.compress import openvino_backend as backend
    from tokenomy.sources import materialize_hf

    backend.export_path()  # installed? before the model is converted
    step("as a Hugging Face directory")
    hf = materialize_hf(source)
    step(f"optimum-intel export + NNCF {scheme.ov_weight_format} weights")
    made = backend.export(hf.path, scheme, spec, out)
    step("reloading with the OpenVINO runtime")
    return dict(made, verified=backend.verify(out))


def _sensitivity_config(dataset: str, seed: int):
    from tokenomy.compress.auto import SensitivityConfig

    return SensitivityConfig(dataset=dataset, seed=seed)


def _user_imatrix(path: str | Path | None, scheme: CompressScheme, source: ModelSource):
    if path is None:
        return None
    if scheme.backend != "auto-gguf":
        raise InvalidInputError(f"--imatrix applies to --scheme auto and the +imatrix schemes "
                                f"(e.g. gguf-q4_0+imatrix), not {scheme.name}.")
    from tokenomy.compress.auto.imatrix_file import load_for

    return load_for(path, source.path)


def candidate_types(scheme: CompressScheme) -> tuple[str, ...]:
    """The types a budgeted scheme chooses among (empty for a scheme of fixed types)."""
    if not scheme.budgeted:
        return ()
    if scheme.backend == "auto-llmcompressor":
        from tokenomy.compress.auto.modules import TYPES
    else:
        from tokenomy.compress.auto.blocks import TYPES
    return TYPES


def allowed_types(scheme: CompressScheme, types: list[str] | None) -> list[str] | None:
    """`types` (any case, e.g. 'w4a16', 'q4_1') as the scheme's own names, or None for
    all of them; one clear error for a type it does not have or a scheme of fixed types."""
    if types is None:
        return None
    candidates = candidate_types(scheme)
    if not candidates:
        raise InvalidInputError(f"--types chooses among a budgeted scheme's types (auto, "
                                f"auto:llmcompressor); {scheme.name} has fixed types. Drop it.")
    by_name = {t.lower(): t for t in candidates}
    wanted = [t.strip() for t in types if t.strip()]
    bad = [t for t in wanted if t.lower() not in by_name]
    if bad or not wanted:
        raise InvalidInputError(f"--types {','.join(bad or types) or '(empty)'}: not a type of "
                                f"--scheme {scheme.name}; choose from "
                                f"{','.join(t.lower() for t in candidates)}.")
    return list(dict.fromkeys(by_name[t.lower()] for t in wanted))


def _auto(source: ModelSource, scheme: CompressScheme, out: Path, step: Step,
          max_kld: float | None, size_mb: float | None, config, imatrix,
          types: list[str] | None, max_kld_p99: float | None) -> dict:
    from tokenomy.compress.auto import auto_gguf, imatrix_gguf

    if scheme.name == "auto":
        return dict(auto_gguf(source, out, max_kld=max_kld, size_mb=size_mb, config=config,
                              step=step, imatrix=imatrix, types=types,
                              max_kld_p99=max_kld_p99),
                    verified=_verify_gguf(next(out.glob("*.gguf")), scheme))
    made = imatrix_gguf(source, scheme, out, config, step, imatrix)
    return dict(made, verified=_verify_gguf(next(out.glob("*.gguf")), scheme))


def _verify_gguf(target: Path, scheme: CompressScheme) -> str:
    import numpy as np

    from tokenomy.compress.gguf_backend import load_llama

    llm = load_llama(target, n_ctx=16, logits_all=True)
    ids = llm.tokenize(b"The quick brown fox", add_bos=True)
    llm.eval(ids)
    logits = llm.scores[len(ids) - 1]
    if not np.isfinite(logits).all():
        raise InvalidInputError(f"the file written, {target}, produces NaN/inf logits; "
                                f"{scheme.name} does not work for this model.")
    return (f"llama-cpp-python load + forward pass over {len(ids)} tokens: finite logits, "
            f"|max| {float(np.abs(logits).max()):.1f}")


def _gguf(source: ModelSource, scheme: CompressScheme, out: Path, step: Step) -> dict:
    from tokenomy.compress.gguf_backend import quantize

    if source.kind != "gguf":
        raise InvalidInputError(
            f"{scheme.name} requantizes a GGUF file, and {source.path} is a Hugging Face "
            "directory. Convert it first with llama.cpp's convert_hf_to_gguf.py, then pass "
            "the .gguf file."
        )
    target = out / f"{source.path.stem.split('.')[0]}.{scheme.gguf_type}.gguf"
    step(f"llama.cpp quantize -> {scheme.gguf_type}")
    params, fallbacks = quantize(source.path, scheme, target)
    step("reloading with llama-cpp-python")
    verified = _verify_gguf(target, scheme)
    notes = [f"llama.cpp fell back to another type for {fallbacks}"] if fallbacks else []
    return dict(recipe=json.dumps(params), notes=notes, verified=verified)


def _llmcompressor(source: ModelSource, scheme: CompressScheme, out: Path, step: Step,
                   dataset: str, samples: int, max_seq_length: int, seed: int) -> dict:
    from tokenomy.compress import llmcompressor_backend as backend
    from tokenomy.evaluate.prompts import calibration_texts
    from tokenomy.sources import load_transformers, materialize_hf

    step("loading the model into transformers")
    model, tokenizer = load_transformers(materialize_hf(source), dtype="bfloat16")
    modifiers, group, why = backend.build_recipe(scheme, model)
    calib, texts = None, []
    if scheme.calibration:
        texts = calibration_texts(tokenizer, dataset, samples, seed)
        tokens = sum(min(len(tokenizer(t).input_ids), max_seq_length) for t in texts)
        calib = Calibration(dataset=str(dataset), split="calibration", samples=len(texts),
                            max_seq_length=max_seq_length, seed=seed, tokens=tokens)
    step(f"llm-compressor oneshot ({scheme.algorithm}"
         f"{f', {len(texts)} calibration samples' if texts else ''})")
    try:
        backend.run(model, tokenizer, scheme, modifiers, texts, max_seq_length, out)
        step("reloading with transformers")
        verified = backend.verify_reload(out)
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError) as e:
        raise TokenomyError(_backend_failure(scheme, e)) from e
    recipe = (out / "recipe.yaml").read_text() if (out / "recipe.yaml").is_file() else ""
    return dict(recipe=recipe, group_size=group, group_size_reason=why, calibration=calib,
                verified=verified)
