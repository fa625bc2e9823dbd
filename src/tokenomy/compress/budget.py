"""Estimate a compression job's own peak RAM before starting, and refuse when the
machine cannot hold it (with the numbers)."""

from __future__ import annotations

from tokenomy.compress.schemes import CompressScheme
from tokenomy.errors import InvalidInputError
from tokenomy.modelspec import ModelSpec

GiB = 2**30
RUNTIME_BYTES = 1.2 * GiB  # torch + transformers + llm-compressor imported


def estimate_peak_bytes(spec: ModelSpec, scheme: CompressScheme, source_bytes: int,
                        samples: int, max_seq_length: int) -> int:
    """Rough upper estimate, seen here for SmolLM2-135M GPTQ: 2.3 GB measured.

    llm-compressor: the model in 16 bit, a second copy while compressing and saving,
    calibration activations of one layer for all samples (in and out, fp32) and, for
    GPTQ/SparseGPT, one fp32 Hessian per Linear of the widest layer block.
    llama.cpp: the source file mapped plus the output written. OpenVINO export: the fp32
    model traced, its OpenVINO graph and the compressed copy.
    """
    if scheme.backend == "gguf":
        return int(0.3 * GiB + 2 * source_bytes)
    if scheme.backend == "auto-gguf":  # fp32 model + Fisher + gradients, tables in numpy
        return int(RUNTIME_BYTES + 4 * spec.total_params * 4)
    if scheme.backend == "auto-llmcompressor":  # the same, then a bf16 copy quantized
        return int(RUNTIME_BYTES + 4 * spec.total_params * 4 + 2.5 * spec.total_params * 2)
    if scheme.backend == "openvino":  # fp32 torch model traced + the OpenVINO graph
        return int(RUNTIME_BYTES + 3 * spec.total_params * 4)
    weights = spec.total_params * 2
    total = RUNTIME_BYTES + 2.5 * weights
    if scheme.calibration:
        total += samples * max_seq_length * spec.hidden_size * 4 * 4
    if scheme.algorithm in ("gptq", "smoothquant-gptq", "sparsegpt"):
        widths = [spec.hidden_size] * 4 + [spec.intermediate_size]
        total += sum(w * w * 4 for w in widths)
    return int(total)


def check_fits(estimate: int, available: int | None = None) -> None:
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    if estimate > 0.9 * available:
        raise InvalidInputError(
            f"this compression job needs about {estimate / GiB:.1f} GiB of RAM at its peak "
            f"but only {available / GiB:.1f} GiB is available. Use a machine with more "
            "memory (or the Ray executor), fewer --calibration-samples, or a shorter "
            "--max-seq-length."
        )
