"""Memory model: weight bytes per scheme, KV cache, workspace, and which tensor/pipeline
parallel layouts are deployable on a GPU type (vLLM's rules)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict

from tokenomy.catalog import Engine, Gpu, Scheme
from tokenomy.modelspec import ModelSpec

GiB = 2**30
TP_SIZES = (1, 2, 4, 8, 16)
MAX_PIPELINE_STAGES = 64


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class WeightBytes(_Result):
    """Bytes of the weights under a scheme, split as quantizers treat them."""

    linear: float
    embedding: float
    lm_head: float
    other: float  # norms, routers, vision tower: 16 bit
    expert: float  # the routed-expert part of `linear`

    @property
    def total(self) -> float:
        return self.linear + self.embedding + self.lm_head + self.other


def weight_bytes(spec: ModelSpec, scheme: Scheme) -> WeightBytes:
    p = spec.params
    per_linear = scheme.bits_per_linear_weight / 8
    return WeightBytes(
        linear=p.linear * per_linear,
        embedding=p.embedding * scheme.embedding_bits / 8,
        lm_head=p.lm_head * scheme.lm_head_bits / 8,
        other=p.other * 2,
        expert=p.expert_linear * per_linear,
    )


def weights_read_per_step(spec: ModelSpec, w: WeightBytes, tokens: int) -> float:
    """Weight bytes one forward pass over `tokens` tokens streams from memory.

    Dense weights are read once per step. Routed experts: with uniform routing, a MoE
    layer touches E * (1 - (1 - k/E)^tokens) distinct experts, so a single token reads
    only its top-k while a large batch reads nearly all of them (an estimate: real
    routers are not uniform). The embedding table is gathered, not streamed, unless
    it is tied to the output head.
    """
    dense = w.total - w.expert - (w.embedding if not spec.tie_embeddings else 0)
    if spec.vision:
        dense -= spec.vision.params * 2
    if not spec.moe or w.expert == 0:
        return dense
    k_over_e = spec.moe.experts_per_token / spec.moe.num_experts
    touched = 1 - (1 - k_over_e) ** max(tokens, 1)
    return dense + w.expert * touched


def kv_bytes_per_sequence(spec: ModelSpec, context: int, kv_bits: int, tp: int, pp: int) -> float:
    """KV-cache bytes one sequence of `context` tokens takes on one GPU of a TP x PP layout."""
    return spec.kv_elements(context, tp) * kv_bits / 8 / pp


def tp_problem(spec: ModelSpec, scheme: Scheme, tp: int) -> str | None:
    """Why tensor parallelism `tp` cannot serve this model/scheme, or None if it can.

    vLLM shards attention heads over ranks: heads must divide evenly; KV heads must
    divide evenly or be replicated (TP a multiple of the KV-head count). Grouped
    quantization also needs every row-parallel input slice to hold whole groups.
    """
    a = spec.attention
    if a.num_heads % tp:
        return f"{a.num_heads} attention heads do not split over {tp} GPUs"
    kv = a.num_kv_heads
    if a.kind == "gqa" and kv % tp and tp % kv:
        return f"{kv} KV heads neither split over nor replicate onto {tp} GPUs"
    if scheme.group_size and tp > 1:
        widths = {"attention output": a.num_heads * (a.v_head_dim or a.head_dim)}
        if spec.num_moe_layers < spec.num_layers:
            widths["FFN"] = spec.intermediate_size
        if spec.moe:
            widths["expert FFN"] = spec.moe.expert_intermediate_size
        for what, width in widths.items():
            if (width // tp) % scheme.group_size or width % tp:
                return (
                    f"{what} width {width}/{tp} = {width / tp:g} is not a multiple of "
                    f"the {scheme.group_size}-weight quantization group"
                )
    return None


def workspace_bytes(spec: ModelSpec, engine: Engine, tp: int) -> float:
    """Activation workspace per GPU at the engine's token budget (vLLM's profile run):
    hidden states plus the widest FFN activation for `max_num_batched_tokens` tokens,
    and fp32 logits for `max_num_seqs` sequences (estimate)."""
    ffn = spec.intermediate_size
    if spec.moe:
        ffn = max(ffn if spec.num_moe_layers < spec.num_layers else 0,
                  spec.moe.experts_per_token * spec.moe.expert_intermediate_size)
    tokens = engine.max_num_batched_tokens
    hidden = tokens * (4 * spec.hidden_size + 2 * ffn / tp) * 2
    logits = engine.max_num_seqs * spec.vocab_size / tp * 4 * 2
    return hidden + logits


class MemoryFit(_Result):
    """Per-GPU memory of one deployment layout, in bytes."""

    gpu: str
    tp: int
    pp: int
    usable: float  # memory x engine utilization
    weights: float
    workspace: float
    runtime: float
    kv_room: float
    kv_per_sequence: float  # at the workload's context length
    context: int

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def max_sequences(self) -> int:
        if self.kv_room <= 0:
            return 0
        return int(self.kv_room // self.kv_per_sequence)

    @property
    def fits(self) -> bool:
        return self.max_sequences >= 1


def memory_fit(
    spec: ModelSpec,
    scheme: Scheme,
    gpu: Gpu,
    engine: Engine,
    tp: int,
    pp: int,
    context: int,
    kv_bits: int,
) -> MemoryFit:
    usable = gpu.memory_gib * GiB * engine.gpu_memory_utilization
    weights = weight_bytes(spec, scheme).total / (tp * pp)
    workspace = workspace_bytes(spec, engine, tp)
    runtime = engine.runtime_overhead_gib * GiB
    return MemoryFit(
        gpu=gpu.name,
        tp=tp,
        pp=pp,
        usable=usable,
        weights=weights,
        workspace=workspace,
        runtime=runtime,
        kv_room=usable - weights - workspace - runtime,
        kv_per_sequence=kv_bytes_per_sequence(spec, context, kv_bits, tp, pp),
        context=context,
    )


def min_gpus_for_weights(spec: ModelSpec, scheme: Scheme, gpu: Gpu) -> int:
    """The napkin bound: weights alone over the GPU's whole memory."""
    return math.ceil(weight_bytes(spec, scheme).total / (gpu.memory_gib * GiB))


def layouts(spec: ModelSpec, scheme: Scheme, gpu: Gpu) -> Iterator[tuple[int, int]]:
    """(tp, pp) layouts by increasing GPU count: TP within a node; pipeline stages only
    across nodes, each stage a node at the largest valid TP."""
    valid = [tp for tp in TP_SIZES if tp <= gpu.gpus_per_node and not tp_problem(spec, scheme, tp)]
    yield from ((tp, 1) for tp in valid)
    if valid:
        for pp in range(2, min(MAX_PIPELINE_STAGES, spec.num_layers) + 1):
            yield valid[-1], pp


def smallest_deployment(
    spec: ModelSpec,
    scheme: Scheme,
    gpu: Gpu,
    engine: Engine,
    context: int,
    kv_bits: int,
) -> tuple[MemoryFit | None, list[str]]:
    """The fewest GPUs of this type that hold the weights plus one full-context sequence,
    in a layout vLLM accepts; and the notes of layouts rejected on the way."""
    notes = [
        f"TP={tp}: {problem}"
        for tp in TP_SIZES
        if tp <= gpu.gpus_per_node and (problem := tp_problem(spec, scheme, tp))
    ]
    for tp, pp in layouts(spec, scheme, gpu):
        fit = memory_fit(spec, scheme, gpu, engine, tp, pp, context, kv_bits)
        if fit.fits:
            return fit, notes
    return None, notes
