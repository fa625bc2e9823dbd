"""Performance model: a roofline per engine step.

A step runs two kinds of kernels one after the other: the linear layers (GEMMs), which
stream the weights they touch and multiply every token through them, and attention,
which reads each sequence's KV cache. Each kind takes the larger of its memory time and
its compute time (achieved fractions of peak from the engine catalog); then come
tensor-parallel all-reduces and fixed costs per step, per layer (kernel launch gaps and
tails) and per sequence (scheduling, sampling, detokenizing: it is what bends throughput
at very large batch):

    t_step = max(W / (BW * eff_bw), F_linear / (peak[dtype] * eff_compute))
             + max(KV / (BW * eff_bw), F_attention / (peak[bf16] * eff_compute))
             + t_comm + t_0 + L * t_layer + B * t_seq

Decode with few sequences is memory-bound: fewer weight bits -> faster (W4A16 wins).
With many sequences it becomes compute-bound: the math dtype decides (FP8/INT8 W8A8 run
at twice the BF16 rate; weight-only schemes compute in BF16 and pay for dequantizing).
Long contexts at large batch add the KV reads on top of the GEMMs, not under them: the
two kinds of kernel do not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenomy.catalog import Engine, Gpu, Scheme
from tokenomy.catalog.schema import Dtype
from tokenomy.modelspec import ModelSpec
from tokenomy.plan.memory import WeightBytes, weights_read_per_step


@dataclass(frozen=True)
class Hardware:
    """One deployment: a GPU type, an engine and a TP x PP layout."""

    gpu: Gpu
    engine: Engine
    tp: int = 1
    pp: int = 1

    def compute_dtype(self, scheme: Scheme) -> Dtype:
        """The dtype matmuls run in: the scheme's, or its fallback where the GPU lacks it."""
        return scheme.compute if scheme.compute in self.gpu.tflops else scheme.fallback_compute


@dataclass(frozen=True)
class StepTime:
    memory_s: float
    compute_s: float
    comm_s: float
    overhead_s: float
    attn_memory_s: float = 0.0
    attn_compute_s: float = 0.0

    @property
    def total_s(self) -> float:
        return (max(self.memory_s, self.compute_s)
                + max(self.attn_memory_s, self.attn_compute_s)
                + self.comm_s + self.overhead_s)

    @property
    def all_compute_s(self) -> float:
        """The step's compute time, linear layers and attention."""
        return self.compute_s + self.attn_compute_s

    @property
    def bound(self) -> str:
        memory = self.memory_s + self.attn_memory_s
        return "memory" if memory >= self.compute_s + self.attn_compute_s else "compute"


def step_time(
    spec: ModelSpec,
    scheme: Scheme,
    weights: WeightBytes,
    hw: Hardware,
    *,
    decode_seqs: int,
    context: int,
    prefill_tokens: int = 0,
    prefill_context: int = 0,
    kv_bits: int = 16,
) -> StepTime:
    """Time of one engine step on one pipeline stage group, covering all layers.

    `decode_seqs` sequences each add one token attending to `context` tokens;
    `prefill_tokens` prompt tokens (chunked prefill) attend to ~`prefill_context`.
    """
    eff = hw.engine.efficiency
    tokens = decode_seqs + prefill_tokens
    dtype = hw.compute_dtype(scheme)
    # Dequantizing kernels (weight-only, or a fallback to it) reach less of the peak.
    dequant = dtype == "bf16" and scheme.weight_bits < 16
    k_bw = scheme.kernel_bandwidth_efficiency if dequant else 1.0
    k_compute = scheme.kernel_compute_efficiency if dequant else 1.0
    # memory: weights touched + KV cache read by decoding sequences (per TP rank)
    kv_read = decode_seqs * spec.kv_elements(context, hw.tp) * kv_bits / 8
    weight_read = weights_read_per_step(spec, weights, tokens) / hw.tp
    bandwidth = hw.gpu.bandwidth_gbs * 1e9 * eff.decode_bandwidth
    memory_s = weight_read / (bandwidth * k_bw)
    attn_memory_s = kv_read / bandwidth
    # compute: linear layers at the scheme's math dtype, attention in bf16
    linear_flops = 2 * spec.matmul_params_per_token * tokens / hw.tp
    attn_flops = (
        spec.attention_flops(decode_seqs, context)
        + spec.attention_flops(prefill_tokens, prefill_context)
    ) / hw.tp
    compute_s = linear_flops / (hw.gpu.peak_flops(dtype) * eff.compute * k_compute)
    attn_compute_s = attn_flops / (hw.gpu.peak_flops("bf16") * eff.compute)
    return StepTime(
        memory_s=memory_s,
        compute_s=compute_s,
        attn_memory_s=attn_memory_s, attn_compute_s=attn_compute_s,
        comm_s=_comm_s(spec, hw, tokens),
        overhead_s=eff.step_overhead_ms / 1e3 + decode_seqs * eff.sequence_overhead_us / 1e6
        + spec.num_layers * eff.layer_overhead_us / 1e6,
    )


def _comm_s(spec: ModelSpec, hw: Hardware, tokens: int) -> float:
    """Two ring all-reduces of the hidden state per layer under TP; one hop per stage
    boundary under PP."""
    eff = hw.engine.efficiency
    activation = tokens * spec.hidden_size * 2
    comm = 0.0
    if hw.tp > 1:
        link = hw.gpu.interconnect.bandwidth_gbs * 1e9 * eff.interconnect
        per_allreduce = eff.allreduce_latency_us / 1e6 + activation * 2 * (hw.tp - 1) / hw.tp / link
        comm += 2 * spec.num_layers * per_allreduce
    if hw.pp > 1:
        link = hw.engine.pipeline_link_gbs * 1e9 * eff.interconnect
        comm += (hw.pp - 1) * (eff.allreduce_latency_us / 1e6 + activation / link)
    return comm


def prefill_time_s(
    spec: ModelSpec, scheme: Scheme, weights: WeightBytes, hw: Hardware, tokens: int, kv_bits: int
) -> float:
    """Time to prefill one prompt of `tokens` tokens alone (the TTFT floor), in chunks
    of the engine's token budget."""
    budget = hw.engine.max_num_batched_tokens
    total, done = 0.0, 0
    while done < tokens:
        chunk = min(budget, tokens - done)
        total += step_time(
            spec, scheme, weights, hw, decode_seqs=0, context=0,
            prefill_tokens=chunk, prefill_context=done + chunk // 2, kv_bits=kv_bits,
        ).total_s
        done += chunk
    return total
