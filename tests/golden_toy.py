"""The toy world of the planner's golden tests (`test_plan_golden_extra`,
`test_plan_golden_perf`): a toy GPU, engine, model and schemes with round numbers,
and the expected quantities written out by hand from them."""

from __future__ import annotations

from tokenomy.catalog.schema import Efficiency, Engine, Gpu, Interconnect, Price, Scheme, Workload
from tokenomy.modelspec import Attention, ModelSpec

# The same arithmetic in another order differs by rounding only; a 1e9 -> 1e9 + 1 slip is
# 1e-9. Always with abs=0: approx's default absolute 1e-12 would hide that on milliseconds.
TIGHT = 1e-12
GiB = 2**30
SOURCE = dict(source="golden test", as_of="2026-01")

# -- the toy world --------------------------------------------------------------------
# GPU: 1 GiB, 1 GB/s, 0.01 TFLOP/s bf16 (1e10 FLOP/s), 0.02 fp8; a 0.5 GB/s link
GPU = Gpu(name="toy-gpu", vendor="nvidia", memory_gib=1, bandwidth_gbs=1,
          tflops={"bf16": 0.01, "fp8": 0.02},
          interconnect=Interconnect(kind="toy-link", bandwidth_gbs=0.5), gpus_per_node=8,
          price=Price(usd_per_hour=3.6, provider="toy", **SOURCE), **SOURCE)
BANDWIDTH = 1e9 * 0.5  # bytes/s: bandwidth x decode_bandwidth efficiency
BF16_RATE = 1e10 * 0.25  # FLOP/s: peak x compute efficiency
STEP_S, SEQ_S, ALLREDUCE_S = 2e-3, 100e-6, 20e-6
LAYER_S = 25e-6  # per layer per step: 4 layers x 25 us = 0.1 ms a step
TP_LINK = 0.5e9 * 0.5  # bytes/s: the GPU's interconnect x the engine's efficiency
PP_LINK = 0.25e9 * 0.5  # bytes/s: the engine's pipeline link x the same efficiency
ENGINE = Engine(name="toy-engine", gpu_memory_utilization=0.5, max_num_seqs=8,
                max_num_batched_tokens=100, runtime_overhead_gib=0.125,
                pipeline_link_gbs=0.25,
                efficiency=Efficiency(decode_bandwidth=0.5, compute=0.25,
                                      step_overhead_ms=2, sequence_overhead_us=100,
                                      layer_overhead_us=25, allreduce_latency_us=20,
                                      interconnect=0.5), **SOURCE)

# Dense toy: hidden 64, 4 layers, FFN 256 (gated), vocab 1000, 4 heads, 2 KV heads x 16.
# Per layer: q 64x64 + k, v 2 x 64x32 + o 64x64 = 12288; FFN 3 x 64x256 = 49152.
# linear 4 x 61440 = 245760; embedding = LM head = 1000 x 64 = 64000;
# norms 4 x 2 x 64 + 64 = 576.
TOY = ModelSpec(name="toy", hidden_size=64, num_layers=4, intermediate_size=256,
                vocab_size=1000, max_context=4096,
                attention=Attention(num_heads=4, num_kv_heads=2, head_dim=16))
TOY_BF16_BYTES = (245760 + 64000 + 64000 + 576) * 2  # 748672
TOY_STREAMED = TOY_BF16_BYTES - 64000 * 2  # 620672: the embedding is gathered, not read
TOY_FLOPS_PER_TOKEN = 2 * (245760 + 64000)  # linear layers + LM head: 619520
TOY_ATTN_FLOPS = 2 * 4 * (2 * 16) * 4  # per query token per context token, all layers
TOY_KV_BYTES = 2 * 2 * 16 * 4 * 2  # per token, bf16, one GPU: K and V x 2 heads x 16 x 4

BF16 = Scheme(name="toy-bf16", description="16 bit", weight_bits=16, compute="bf16", **SOURCE)
# 4-bit weights, a 16-bit scale per 32 (4.5 bits), 8-bit embedding, 4-bit LM head
W4 = Scheme(name="toy-w4", description="grouped 4 bit", weight_bits=4, group_size=32,
            scale_bits=16, compute="bf16", embedding_bits=8, lm_head_bits=4,
            kernel_bandwidth_efficiency=0.5, kernel_compute_efficiency=0.8, **SOURCE)
W4_BYTES = 245760 * 4.5 / 8 + 64000 * 8 / 8 + 64000 * 4 / 8 + 576 * 2  # 235392


def toy_workload(**over) -> Workload:
    fields = dict(name="toy-chat", description="toy", input_tokens=7, output_tokens=5,
                  mode="online", requests_per_s=500)
    return Workload(**{**fields, **over})


