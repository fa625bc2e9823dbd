"""Schemas of the catalog files. Every entry carries ``source`` and ``as_of``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Dtype = Literal["bf16", "fp8", "int8", "fp4", "int4"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Entry):
    usd_per_hour: float = Field(gt=0)
    provider: str
    source: str
    as_of: str


class Interconnect(_Entry):
    kind: str  # nvlink4, pcie5, infinity-fabric, ...
    bandwidth_gbs: float = Field(gt=0)  # per GPU, one direction, GB/s


class Gpu(_Entry):
    """One accelerator. Memory as the driver reports it (GiB); TFLOPS dense, no sparsity."""

    name: str
    aliases: list[str] = []
    vendor: Literal["nvidia", "amd", "intel", "google", "cpu"]
    memory_gib: float = Field(gt=0)
    bandwidth_gbs: float = Field(gt=0)
    tflops: dict[Dtype, float]
    interconnect: Interconnect
    gpus_per_node: int = 8
    price: Price
    source: str
    as_of: str

    def peak_flops(self, dtype: Dtype) -> float:
        return self.tflops[dtype] * 1e12


class Scheme(_Entry):
    """A precision scheme as the planner sees it: bits stored and the math dtype used."""

    name: str
    description: str
    weight_bits: float = Field(gt=0, le=16)
    group_size: int | None = None  # one scale (and zero point) per this many weights
    scale_bits: float = 0  # bits of scale (+ zero point) per group or per channel
    compute: Dtype  # the dtype the matmuls run in, where the GPU has it
    fallback_compute: Dtype = "bf16"  # where it does not (e.g. FP8 on A100: Marlin W8A16)
    embedding_bits: float = 16
    lm_head_bits: float = 16
    # Dequantizing kernels (weight-only, or a fallback to it) reach less of the engine's
    # efficiency: streaming weights at small batch, and in the GEMMs at large batch.
    kernel_bandwidth_efficiency: float = Field(default=1.0, gt=0, le=1)
    kernel_compute_efficiency: float = Field(default=1.0, gt=0, le=1)
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

    decode_bandwidth: float = Field(gt=0, le=1)  # weight + KV streaming during decode
    compute: float = Field(gt=0, le=1)  # large GEMMs (prefill, big-batch decode)
    step_overhead_ms: float = Field(ge=0)  # scheduling, sampling, kernel launches per step
    sequence_overhead_us: float = Field(default=0, ge=0)  # per decoding sequence per step
    allreduce_latency_us: float = Field(ge=0)
    interconnect: float = Field(gt=0, le=1)


class Engine(_Entry):
    name: str
    gpu_memory_utilization: float = Field(gt=0, le=1)
    max_num_seqs: int = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)
    runtime_overhead_gib: float = Field(ge=0)  # CUDA context, graphs, NCCL buffers
    pipeline_link_gbs: float = Field(default=50, gt=0)  # between nodes (400 Gb/s IB per GPU)
    efficiency: Efficiency
    source: str
    as_of: str


class Workload(_Entry):
    """A traffic shape: token lengths, latency targets (online) or none (offline)."""

    name: str
    description: str
    input_tokens: int = Field(gt=0)
    output_tokens: int = Field(gt=0)
    mode: Literal["online", "offline"]
    ttft_target_s: float | None = Field(default=None, gt=0)
    tpot_target_ms: float | None = Field(default=None, gt=0)
    requests_per_s: float = Field(default=1.0, gt=0)
    source: str = "tokenomy default"
    as_of: str = "2026-11"

    @property
    def context(self) -> int:
        return self.input_tokens + self.output_tokens
