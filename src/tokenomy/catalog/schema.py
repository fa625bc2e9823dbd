"""Schemas of the catalog files. Every entry carries ``source`` and ``as_of``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tokenomy.numbers import finite

Dtype = Literal["bf16", "fp8", "int8", "fp4", "int4"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Entry):
    usd_per_hour: finite(gt=0, le=10_000)  # per GPU
    provider: str
    source: str
    as_of: str


class Interconnect(_Entry):
    kind: str  # nvlink4, pcie5, infinity-fabric, ...
    bandwidth_gbs: finite(gt=0, le=1e6)  # per GPU, one direction, GB/s


class Gpu(_Entry):
    """One accelerator. Memory as the driver reports it (GiB); TFLOPS dense, no sparsity."""

    name: str
    aliases: list[str] = []
    vendor: Literal["nvidia", "amd", "intel", "google", "cpu"]
    memory_gib: finite(gt=0, le=1e6)
    bandwidth_gbs: finite(gt=0, le=1e6)
    tflops: dict[Dtype, finite(gt=0, le=1e6)]
    interconnect: Interconnect
    gpus_per_node: finite(ge=1, le=1024, integer=True) = 8
    price: Price
    source: str
    as_of: str

    def peak_flops(self, dtype: Dtype) -> float:
        return self.tflops[dtype] * 1e12


class Scheme(_Entry):
    """A precision scheme as the planner sees it: bits stored and the math dtype used."""

    name: str
    description: str
    weight_bits: finite(gt=0, le=16)
    group_size: finite(ge=1, le=1e9, integer=True) | None = None  # weights per scale
    scale_bits: finite(ge=0, le=64) = 0  # bits of scale (+ zero point) per group/channel
    compute: Dtype  # the dtype the matmuls run in, where the GPU has it
    fallback_compute: Dtype = "bf16"  # where it does not (e.g. FP8 on A100: Marlin W8A16)
    embedding_bits: finite(gt=0, le=32) = 16
    lm_head_bits: finite(gt=0, le=32) = 16
    # Dequantizing kernels (weight-only, or a fallback to it) reach less of the engine's
    # efficiency: streaming weights at small batch, and in the GEMMs at large batch.
    kernel_bandwidth_efficiency: finite(gt=0, le=1) = 1.0
    kernel_compute_efficiency: finite(gt=0, le=1) = 1.0
    engine: Literal["vllm", "llama.cpp"] = "vllm"
    source: str
    as_of: str

    @property
    def bits_per_linear_weight(self) -> float:
        if self.group_size:
            return self.weight_bits + self.scale_bits / self.group_size
        return self.weight_bits

    @property
    def weight_only(self) -> bool:
        return self.compute == "bf16" and self.weight_bits < 16

    @property
    def below_8_bits(self) -> bool:
        return self.weight_bits < 8


class Efficiency(_Entry):
    """Achieved fraction of peak: calibrated against published measurements (see sources)."""

    decode_bandwidth: finite(gt=0, le=1)  # weight + KV streaming during decode
    compute: finite(gt=0, le=1)  # large GEMMs (prefill, big-batch decode)
    step_overhead_ms: finite(ge=0, le=1e6)  # scheduling, sampling, kernel launches per step
    sequence_overhead_us: finite(ge=0, le=1e6) = 0  # per decoding sequence per step
    layer_overhead_us: finite(ge=0, le=1e6) = 0  # per layer per step (kernel tails, launches)
    allreduce_latency_us: finite(ge=0, le=1e6)
    interconnect: finite(gt=0, le=1)


class Band(_Entry):
    """How far off an estimate may be: the 10th and 90th percentiles of measured /
    predicted over the rows a profile was fitted on (speed; $ moves inversely)."""

    low: finite(gt=0, le=100)
    high: finite(gt=0, le=100)
    rows: finite(ge=1, le=1e9, integer=True)
    median_abs_error: finite(ge=0, le=100)  # median |measured / predicted - 1|
    basis: str = "published measurements"


class Engine(_Entry):
    name: str
    family: str | None = None  # vllm, tensorrt-llm, ... (default: the name)
    versions: str | None = None  # PEP 440 specifier this profile covers, e.g. '<0.8'
    aliases: list[str] = []
    gpu_memory_utilization: finite(gt=0, le=1)
    max_num_seqs: finite(ge=1, le=1e7, integer=True)
    max_num_batched_tokens: finite(ge=1, le=1e9, integer=True)
    runtime_overhead_gib: finite(ge=0, le=1e4)  # CUDA context, graphs, NCCL buffers
    pipeline_link_gbs: finite(gt=0, le=1e6) = 50  # between nodes (400 Gb/s IB per GPU)
    efficiency: Efficiency
    band: Band | None = None  # from benchmarks/plan_calibration.py --write
    fitted_on: list[str] = []  # ids of the measurement rows the factors were fitted on
    source: str
    as_of: str

    @property
    def family_name(self) -> str:
        return self.family or self.name


class Workload(_Entry):
    """A traffic shape: token lengths, latency targets (online) or none (offline)."""

    name: str
    description: str
    input_tokens: finite(ge=1, le=10_000_000, integer=True)
    output_tokens: finite(ge=1, le=10_000_000, integer=True)
    mode: Literal["online", "offline"]
    ttft_target_s: finite(gt=0, le=86_400) | None = None
    tpot_target_ms: finite(gt=0, le=86_400_000) | None = None
    requests_per_s: finite(gt=0, le=1_000_000) = 1.0
    source: str = "tokenomy default"
    as_of: str = "2026-11"

    @property
    def context(self) -> int:
        return self.input_tokens + self.output_tokens
