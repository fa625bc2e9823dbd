"""Golden numbers of the planner's step time and cost (plan/perf.py, cost.py) on the toy
model and GPU of `golden_toy`: every term of the arithmetic written out by hand.

The expected values are literals and arithmetic on literals, never tokenomy's helpers.
"""

from __future__ import annotations

import math

import pytest

from golden_toy import (
    ALLREDUCE_S,
    BANDWIDTH,
    BF16,
    BF16_RATE,
    ENGINE,
    GPU,
    LAYER_S,
    PP_LINK,
    SEQ_S,
    SOURCE,
    STEP_S,
    TIGHT,
    TOY,
    TOY_ATTN_FLOPS,
    TOY_FLOPS_PER_TOKEN,
    TOY_KV_BYTES,
    TOY_STREAMED,
    TP_LINK,
    W4,
    toy_workload,
)
from tokenomy.catalog.schema import Efficiency, Scheme
from tokenomy.plan.cost import choose_batch, cost, operating_point, ranges
from tokenomy.plan.memory import weight_bytes
from tokenomy.plan.perf import Hardware, StepTime, prefill_time_s, step_time


# -- perf.py ---------------------------------------------------------------------------
# A step is two kernels one after the other, each the larger of its memory and compute
# time: the GEMMs (weights streamed vs linear FLOPs) and attention (KV cache read vs
# attention FLOPs, bf16); then comm, and overhead per step, per layer and per sequence.
def test_step_time_with_the_defaults():
    """Hardware(gpu, engine) is TP 1, PP 1; step_time's defaults are no prefill and a
    16-bit cache. 2 sequences decode over 100 tokens: memory-bound GEMMs, a KV-bound
    attention kernel."""
    t = step_time(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE),
                  decode_seqs=2, context=100)
    weights = TOY_STREAMED / BANDWIDTH  # 620672 B: 1.241344 ms
    kv = 2 * TOY_KV_BYTES * 100 / BANDWIDTH  # 102400 B: 0.2048 ms
    linear = 2 * TOY_FLOPS_PER_TOKEN / BF16_RATE  # 0.495616 ms
    attention = TOY_ATTN_FLOPS * 2 * 100 / BF16_RATE  # 0.08192 ms
    assert t.memory_s == pytest.approx(weights, rel=TIGHT, abs=0)
    assert t.memory_s == pytest.approx(1.241344e-3, rel=TIGHT, abs=0)
    assert t.attn_memory_s == pytest.approx(kv, rel=TIGHT, abs=0)
    assert t.attn_memory_s == pytest.approx(0.2048e-3, rel=TIGHT, abs=0)
    assert t.compute_s == pytest.approx(linear, rel=TIGHT, abs=0)
    assert t.compute_s == pytest.approx(0.495616e-3, rel=TIGHT, abs=0)
    assert t.attn_compute_s == pytest.approx(attention, rel=TIGHT, abs=0)
    assert t.attn_compute_s == pytest.approx(0.08192e-3, rel=TIGHT, abs=0)
    assert t.all_compute_s == pytest.approx(0.577536e-3, rel=TIGHT, abs=0)
    assert t.comm_s == 0.0
    # per step, per layer (all 4) and per sequence: 2 ms + 0.1 ms + 0.2 ms
    assert t.overhead_s == pytest.approx(STEP_S + 4 * LAYER_S + 2 * SEQ_S, rel=TIGHT, abs=0)
    assert t.overhead_s == pytest.approx(2.3e-3, rel=TIGHT, abs=0)
    assert t.total_s == pytest.approx(1.241344e-3 + 0.2048e-3 + 2.3e-3, rel=TIGHT, abs=0)
    assert t.bound == "memory"
    # prefill tokens attend to no earlier token unless told: matmuls only, no KV read
    t = step_time(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE),
                  decode_seqs=0, context=0, prefill_tokens=3)
    assert t.compute_s == pytest.approx(3 * TOY_FLOPS_PER_TOKEN / BF16_RATE, rel=TIGHT, abs=0)
    assert (t.attn_memory_s, t.attn_compute_s) == (0.0, 0.0)
    assert t.overhead_s == pytest.approx(STEP_S + 4 * LAYER_S, rel=TIGHT, abs=0)


def test_step_time_tp2_pp2_dequantizing_8bit_cache():
    """W4 (dequantizing: half the bandwidth, 80% of the compute) on TP 2 x PP 2: 3
    sequences decode over 50 tokens of 8-bit cache while 10 prompt tokens attend to 5."""
    hw = Hardware(GPU, ENGINE, tp=2, pp=2)
    t = step_time(TOY, W4, weight_bytes(TOY, W4), hw, decode_seqs=3, context=50,
                  prefill_tokens=10, prefill_context=5, kv_bits=8)
    weights = (235392 - 64000) / 2  # less the 8-bit embedding, over 2 GPUs: 85696
    kv = 3 * (2 * 1 * 16 * 4) * 50 * 1  # one KV head per GPU, 1 byte: 19200
    # the dequantizing kernel's bandwidth share is the GEMMs'; attention reads at full
    assert t.memory_s == pytest.approx(weights / (BANDWIDTH * 0.5), rel=TIGHT, abs=0)
    assert t.memory_s == pytest.approx(3.42784e-4, rel=TIGHT, abs=0)
    assert t.attn_memory_s == pytest.approx(kv / BANDWIDTH, rel=TIGHT, abs=0)
    assert t.attn_memory_s == pytest.approx(3.84e-5, rel=TIGHT, abs=0)
    linear = TOY_FLOPS_PER_TOKEN * 13 / 2  # 13 tokens, each GPU half the matmuls
    attention = (TOY_ATTN_FLOPS * 3 * 50 + TOY_ATTN_FLOPS * 10 * 5) / 2  # 102400
    assert t.compute_s == pytest.approx(linear / (BF16_RATE * 0.8), rel=TIGHT, abs=0)
    assert t.compute_s == pytest.approx(2.01344e-3, rel=TIGHT, abs=0)
    assert t.attn_compute_s == pytest.approx(attention / BF16_RATE, rel=TIGHT, abs=0)
    assert t.attn_compute_s == pytest.approx(4.096e-5, rel=TIGHT, abs=0)
    activation = 13 * 64 * 2  # bytes of the bf16 hidden state: 1664
    ring = ALLREDUCE_S + activation * 2 * (2 - 1) / 2 / TP_LINK  # 26.656 us
    hop = ALLREDUCE_S + activation / PP_LINK  # 33.312 us
    assert t.comm_s == pytest.approx(2 * 4 * ring + (2 - 1) * hop, rel=TIGHT, abs=0)
    assert t.comm_s == pytest.approx(246.56e-6, rel=TIGHT, abs=0)
    # the step covers all 4 layers (2 a stage): the per-layer overhead counts 4
    assert t.overhead_s == pytest.approx(STEP_S + 4 * LAYER_S + 3 * SEQ_S, rel=TIGHT, abs=0)
    # both kernels compute-bound: 2.01344 ms of GEMMs, then 40.96 us of attention
    # (above the 38.4 us KV read)
    assert t.total_s == pytest.approx(2.01344e-3 + 4.096e-5 + 246.56e-6 + 2.4e-3,
                                      rel=TIGHT, abs=0)
    assert t.bound == "compute"


# (GEMMs, attention): 8 sequences decode over 1000 tokens: 8 x 1000 x 512 B = 4.096 MB of
# KV, 8.192 ms, over 8 x 1000 x 1024 FLOPs = 3.2768 ms of attention math, while the GEMMs
# over 8 tokens compute 1.982464 ms against 1.241344 ms of weights. The old single
# roofline, max(1.241344 + 8.192, 1.982464 + 3.2768) = 9.433344 ms, hid the GEMMs under
# the KV read; the two kernels take 1.982464 + 8.192 = 10.174464 ms. Then 3 prompt tokens
# alone attending to 1000: GEMMs memory-bound (0.743424 ms of math under 1.241344 ms of
# weights), attention compute-bound (3 x 1000 x 1024 FLOPs: 1.2288 ms, no KV read);
# the old max(1.241344, 0.743424 + 1.2288) = 1.972224 ms.
@pytest.mark.parametrize("decode,context,prefill,gemms,attention,old,bound", [
    (8, 1000, 0, 1.982464e-3, 8.192e-3, 9.433344e-3, "memory"),
    (0, 0, 3, 1.241344e-3, 1.2288e-3, 1.972224e-3, "compute"),
], ids=["kv-read-after-compute-bound-gemms", "attention-math-after-memory-bound-gemms"])
def test_attention_is_a_kernel_of_its_own(decode, context, prefill, gemms, attention, old,
                                          bound):
    t = step_time(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE),
                  decode_seqs=decode, context=context, prefill_tokens=prefill,
                  prefill_context=1000)
    tokens = decode + prefill
    assert t.memory_s == pytest.approx(TOY_STREAMED / BANDWIDTH, rel=TIGHT, abs=0)
    assert t.compute_s == pytest.approx(tokens * TOY_FLOPS_PER_TOKEN / BF16_RATE,
                                        rel=TIGHT, abs=0)
    assert t.attn_memory_s == pytest.approx(decode * context * TOY_KV_BYTES / BANDWIDTH,
                                            rel=TIGHT, abs=0)
    assert t.attn_compute_s == pytest.approx(
        TOY_ATTN_FLOPS * (decode * context + prefill * 1000) / BF16_RATE, rel=TIGHT, abs=0)
    assert max(t.memory_s, t.compute_s) == pytest.approx(gemms, rel=TIGHT, abs=0)
    assert max(t.attn_memory_s, t.attn_compute_s) == pytest.approx(attention, rel=TIGHT, abs=0)
    overhead = STEP_S + 4 * LAYER_S + decode * SEQ_S
    assert t.overhead_s == pytest.approx(overhead, rel=TIGHT, abs=0)
    assert t.total_s == pytest.approx(gemms + attention + overhead, rel=TIGHT, abs=0)
    assert t.total_s - overhead > old * 1.05  # the sum of the kernels, not one roofline
    # bound: all memory time against all compute time (9.433344 vs 5.259264 ms; 1.241344
    # vs 1.972224 ms), whichever kernel is which
    assert t.bound == bound


def test_the_per_layer_overhead_counts_every_layer():
    """A 7-layer TOY pays 7 x 25 us a step, whatever its size; an engine without the
    factor (the schema's default) pays none."""
    deep = TOY.model_copy(update=dict(num_layers=7))
    t = step_time(deep, BF16, weight_bytes(deep, BF16), Hardware(GPU, ENGINE),
                  decode_seqs=3, context=10)
    assert t.overhead_s == pytest.approx(2e-3 + 7 * 25e-6 + 3 * 100e-6, rel=TIGHT, abs=0)
    assert t.overhead_s == pytest.approx(2.475e-3, rel=TIGHT, abs=0)
    bare = ENGINE.efficiency.model_dump()
    del bare["layer_overhead_us"]
    engine = ENGINE.model_copy(update=dict(efficiency=Efficiency(**bare)))
    t = step_time(deep, BF16, weight_bytes(deep, BF16), Hardware(GPU, engine),
                  decode_seqs=3, context=10)
    assert t.overhead_s == pytest.approx(2e-3 + 3 * 100e-6, rel=TIGHT, abs=0)


def test_step_time_tp4_pp3_comm():
    # 4 GPUs in the ring send 3/4 of the activation twice; 2 hops between 3 stages
    t = step_time(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE, tp=4, pp=3),
                  decode_seqs=5, context=10)
    ring = ALLREDUCE_S + 5 * 64 * 2 * 2 * 3 / 4 / TP_LINK
    hop = ALLREDUCE_S + 5 * 64 * 2 / PP_LINK
    assert t.comm_s == pytest.approx(2 * 4 * ring + 2 * hop, rel=TIGHT, abs=0)


@pytest.mark.parametrize("gpu,bandwidth_share,rate", [
    (GPU, 1.0, 2e10 * 0.25),  # FP8 math where the GPU has it: no dequantizing
    (GPU.model_copy(update=dict(tflops={"bf16": 0.01})), 0.5, BF16_RATE * 0.8),  # fallback
])
def test_fp8_runs_natively_or_falls_back_to_a_dequantizing_kernel(gpu, bandwidth_share,
                                                                    rate):
    fp8 = Scheme(name="toy-fp8", description="fp8", weight_bits=8, compute="fp8",
                 kernel_bandwidth_efficiency=0.5, kernel_compute_efficiency=0.8, **SOURCE)
    t = step_time(TOY, fp8, weight_bytes(TOY, fp8), Hardware(gpu, ENGINE),
                  decode_seqs=1, context=0)
    streamed = 245760 + 64000 * 2 + 576 * 2  # 8-bit linear, 16-bit head and norms
    assert t.memory_s == pytest.approx(streamed / (BANDWIDTH * bandwidth_share), rel=TIGHT, abs=0)
    assert t.compute_s == pytest.approx(TOY_FLOPS_PER_TOKEN / rate, rel=TIGHT, abs=0)


def test_16_bit_weights_are_never_dequantized():
    """Kernel factors on a 16-bit scheme do not apply: nothing is dequantized."""
    odd = BF16.model_copy(update=dict(kernel_bandwidth_efficiency=0.5,
                                      kernel_compute_efficiency=0.5))
    t = step_time(TOY, odd, weight_bytes(TOY, odd), Hardware(GPU, ENGINE),
                  decode_seqs=1, context=0)
    assert t.memory_s == pytest.approx(TOY_STREAMED / BANDWIDTH, rel=TIGHT, abs=0)
    assert t.compute_s == pytest.approx(TOY_FLOPS_PER_TOKEN / BF16_RATE, rel=TIGHT, abs=0)


def test_a_tie_between_memory_and_compute_is_memory_bound():
    assert StepTime(memory_s=1.0, compute_s=1.0, comm_s=0.0, overhead_s=0.0).bound == "memory"
    assert StepTime(memory_s=1.0, compute_s=1.5, comm_s=0.0, overhead_s=0.0).bound == "compute"
    # both kernels count: 1 + 1 of memory against 1.5 + 0.5 of compute is a tie
    assert StepTime(memory_s=1.0, compute_s=1.5, comm_s=0.0, overhead_s=0.0,
                    attn_memory_s=1.0, attn_compute_s=0.5).bound == "memory"
    # memory-bound GEMMs (2 > 0.5) under compute-bound attention (2 > 0.25): 2.25 < 2.5
    assert StepTime(memory_s=2.0, compute_s=0.5, comm_s=0.0, overhead_s=0.0,
                    attn_memory_s=0.25, attn_compute_s=2.0).bound == "compute"


def test_step_time_sums_the_two_kernels():
    """total = max(GEMMs) + max(attention) + comm + overhead; no attention unless told."""
    t = StepTime(memory_s=1.0, compute_s=2.0, comm_s=0.25, overhead_s=0.125,
                 attn_memory_s=4.0, attn_compute_s=3.0)
    assert t.total_s == 2.0 + 4.0 + 0.25 + 0.125 == 6.375
    assert t.all_compute_s == 2.0 + 3.0 == 5.0
    t = StepTime(memory_s=2.0, compute_s=1.0, comm_s=0.25, overhead_s=0.125,
                 attn_memory_s=3.0, attn_compute_s=3.5)
    assert (t.total_s, t.all_compute_s) == (2.0 + 3.5 + 0.375, 1.0 + 3.5) == (5.875, 4.5)
    bare = StepTime(memory_s=1.0, compute_s=0.5, comm_s=0.25, overhead_s=0.125)
    assert (bare.attn_memory_s, bare.attn_compute_s) == (0.0, 0.0)
    assert (bare.total_s, bare.all_compute_s) == (1.375, 0.5)


def test_prefill_runs_in_chunks_of_the_token_budget():
    """251 prompt tokens at 100 a step: chunks of 100, 100 and 51, each attending to
    what came before plus half of itself (50, 150, 200 + 51 // 2 = 225). No sequence
    decodes: no KV read, no per-sequence overhead."""
    def chunk_s(tokens, context):
        linear = tokens * TOY_FLOPS_PER_TOKEN / BF16_RATE
        attention = TOY_ATTN_FLOPS * tokens * context / BF16_RATE
        return (max(TOY_STREAMED / BANDWIDTH, linear) + max(0.0, attention)
                + STEP_S + 4 * LAYER_S)

    expected = chunk_s(100, 50) + chunk_s(100, 150) + chunk_s(51, 225)
    got = prefill_time_s(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE), 251, 16)
    assert got == pytest.approx(expected, rel=TIGHT, abs=0)
    # GEMMs + attention per chunk: 24.7808 + 2.048, 24.7808 + 6.144, 12.638208 + 4.70016 ms
    assert got == pytest.approx((0.0247808 + 2.048e-3) + (0.0247808 + 6.144e-3)
                                + (0.012638208 + 4.70016e-3) + 3 * 2.1e-3, rel=TIGHT, abs=0)


# -- cost.py ---------------------------------------------------------------------------
# TOY bf16 on TP 1 x PP 2 at batch 5: 3 sequences a micro-batch. Workload 7 tokens in, 5
# out: decode attends to 7 + 5 // 2 = 9 tokens; each step prefills ceil(3 x 7 / 5) = 5
# prompt tokens attending to 7 // 2 = 3.
HW_PP2 = Hardware(GPU, ENGINE, tp=1, pp=2)
WEIGHTS_S = TOY_STREAMED / BANDWIDTH  # 1.241344 ms
TOKEN_S = TOY_FLOPS_PER_TOKEN / BF16_RATE  # 0.247808 ms of matmuls per token
KV_S = TOY_KV_BYTES / BANDWIDTH  # 1.024 us to read one token's KV cache
ATTN_S = TOY_ATTN_FLOPS / BF16_RATE  # 0.4096 us per query token per context token
FIXED_S = STEP_S + 4 * LAYER_S  # 2.1 ms a step: per step and per layer


def _hop(tokens):
    return ALLREDUCE_S + tokens * 64 * 2 / PP_LINK


# decode alone: memory-bound GEMMs (3 tokens: 0.743424 ms < 1.241344 ms), KV-bound
# attention (27 tokens of KV, 27.648 us, over 11.0592 us of math)
DECODE_S = (max(WEIGHTS_S, 3 * TOKEN_S) + max(3 * 9 * KV_S, 3 * 9 * ATTN_S)
            + _hop(3) + FIXED_S + 3 * SEQ_S)
# with the prompts: compute-bound GEMMs (8 tokens: 1.982464 ms), and attention still
# KV-bound (27.648 us over (27 + 15) x 0.4096 = 17.2032 us), so the KV read adds to the
# GEMMs: 2.010112 ms, where one roofline, max(1.268992, 1.9996672), hid it
MIXED_S = max(WEIGHTS_S, 8 * TOKEN_S) + max(3 * 9 * KV_S, (3 * 9 + 5 * 3) * ATTN_S)
TPOT = MIXED_S + _hop(8) + FIXED_S + 3 * SEQ_S
# the prompts' own compute, GEMMs and attention (StepTime.all_compute_s): 1.245184 ms
PROMPT_COMPUTE = 5 * TOKEN_S + 5 * 3 * ATTN_S
PREFILL_S = max(WEIGHTS_S, 7 * TOKEN_S) + max(0.0, 7 * 3 * ATTN_S) + _hop(7) + FIXED_S


def test_toy_figures_by_hand():
    figures = (DECODE_S, MIXED_S, TPOT, PROMPT_COMPUTE, PREFILL_S)
    assert figures == pytest.approx(
        (3.692064e-3, 2.010112e-3, 4.438304e-3, 1.245184e-3, 3.8704256e-3), rel=TIGHT, abs=0)
    # the GEMMs' math alone leaves out the prompts' 6.144 us of attention
    prompts_attention = PROMPT_COMPUTE - 5 * TOKEN_S
    assert prompts_attention == pytest.approx(6.144e-6, rel=TIGHT, abs=0)


def test_the_toy_steps_kernel_by_kernel():
    w = weight_bytes(TOY, BF16)
    mixed = step_time(TOY, BF16, w, HW_PP2, decode_seqs=3, context=9, prefill_tokens=5,
                      prefill_context=3)
    assert (mixed.memory_s, mixed.compute_s, mixed.attn_memory_s, mixed.attn_compute_s) == \
        pytest.approx((1.241344e-3, 1.982464e-3, 27.648e-6, 17.2032e-6), rel=TIGHT, abs=0)
    assert mixed.overhead_s == pytest.approx(2.1e-3 + 3e-4, rel=TIGHT, abs=0)
    assert mixed.total_s == pytest.approx(TPOT, rel=TIGHT, abs=0)
    prompts = step_time(TOY, BF16, w, HW_PP2, decode_seqs=0, context=0, prefill_tokens=5,
                        prefill_context=3)
    assert prompts.all_compute_s == pytest.approx(PROMPT_COMPUTE, rel=TIGHT, abs=0)


def test_operating_point_with_pipeline_stages_and_odd_lengths():
    p = operating_point(TOY, BF16, weight_bytes(TOY, BF16), HW_PP2, toy_workload(), batch=5,
                        kv_bits=16)  # prefill_s left to it: one 7-token chunk
    assert p.batch == 5
    assert p.tpot_ms == pytest.approx(TPOT * 1e3, rel=TIGHT, abs=0)
    assert p.ttft_s == pytest.approx(PREFILL_S + TPOT, rel=TIGHT, abs=0)
    assert p.output_tokens_per_s == pytest.approx(5 / TPOT, rel=TIGHT, abs=0)
    assert p.input_tokens_per_s == pytest.approx(7 / TPOT, rel=TIGHT, abs=0)
    # all memory (1.241344 + 0.027648 ms) under all compute (1.982464 + 0.0172032 ms)
    assert p.bound == "compute"
    # the prompts' share: what they add to the step (0.74624 ms) is less than their own
    # compute, GEMMs and attention (1.245184 ms), which counts
    added = TPOT - DECODE_S
    assert added == pytest.approx(0.74624e-3, rel=TIGHT, abs=0)
    assert added < PROMPT_COMPUTE
    assert p.input_time_share == pytest.approx(PROMPT_COMPUTE / TPOT, rel=TIGHT, abs=0)


def test_cost_of_the_toy_point():
    p = operating_point(TOY, BF16, weight_bytes(TOY, BF16), HW_PP2, toy_workload(), batch=5,
                        kv_bits=16)
    c = cost(p, gpus_per_replica=2, usd_per_gpu_hour=3.6, workload=toy_workload())
    usd_per_s = 2 * 3.6 / 3600  # 0.002
    # per step (TPOT): 7 prompt tokens on PROMPT_COMPUTE seconds, 5 answer tokens on
    # the rest, 12 tokens on all of it
    assert c.usd_per_hour == pytest.approx(7.2, rel=TIGHT, abs=0)
    assert c.usd_per_m_input == pytest.approx(usd_per_s * PROMPT_COMPUTE / 7 * 1e6, rel=1e-9)
    assert c.usd_per_m_output == pytest.approx(
        usd_per_s * (TPOT - PROMPT_COMPUTE) / 5 * 1e6, rel=1e-9)
    assert c.usd_per_m_tokens == pytest.approx(usd_per_s * TPOT / 12 * 1e6, rel=1e-9)
    # a replica emits 5 tokens a step, one 5-token answer's worth: 1 request per TPOT;
    # 500 requests/s need ceil(500 x 4.438 ms) = ceil(2.22) = 3 replicas of 2 GPUs
    assert (c.replicas, c.gpus) == (3, 6)
    assert c.usd_per_month == pytest.approx(3 * 7.2 * 730, rel=TIGHT, abs=0)
    assert c.utilization == pytest.approx(500 * TPOT / 3, rel=1e-9)
    assert (c.usd_per_m_input, c.usd_per_m_output, c.usd_per_m_tokens) == pytest.approx(
        (0.35576686, 1.277248, 0.73971733), rel=1e-8)


def test_ranges_scale_speed_and_cost_by_the_band():
    p = operating_point(TOY, BF16, weight_bytes(TOY, BF16), HW_PP2, toy_workload(), batch=5,
                        kv_bits=16)
    c = cost(p, 2, 3.6, toy_workload())
    r = ranges(p, c, low=0.5, high=1.5, basis="toy")
    assert r.basis == "toy"
    assert r.tokens_per_s == pytest.approx((2.5 / TPOT, 7.5 / TPOT), rel=TIGHT, abs=0)
    assert r.tpot_ms == pytest.approx((TPOT * 1e3 / 1.5, TPOT * 1e3 * 2), rel=TIGHT, abs=0)
    assert r.ttft_s == pytest.approx(((PREFILL_S + TPOT) / 1.5, (PREFILL_S + TPOT) * 2),
                                     rel=TIGHT, abs=0)
    assert r.usd_per_month == pytest.approx((15768 / 1.5, 15768 * 2), rel=TIGHT, abs=0)
    for field in ("usd_per_m_input", "usd_per_m_output", "usd_per_m_tokens"):
        point = getattr(c, field)
        assert getattr(r, field) == pytest.approx((point / 1.5, point * 2), rel=TIGHT, abs=0)


@pytest.mark.parametrize("max_batch,sizes", [
    (2000, [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
            2000]),
    (100, [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 100]),
    (1, [1]),
])
def test_batch_sizes_evaluated(max_batch, sizes):
    """The concurrency grid vLLM users tune over, cut at the largest batch that fits."""
    _, points, _ = choose_batch(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE),
                                toy_workload(mode="offline"), max_batch, 16)
    assert [p.batch for p in points] == sizes


def _online(**targets):
    """The points of TOY bf16 on one GPU for the toy workload with these targets."""
    return choose_batch(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE),
                        toy_workload(**targets), 8, 16)


def test_a_point_exactly_at_the_tpot_target_meets_it():
    _, points, _ = _online(tpot_target_ms=1e6)
    assert [p.batch for p in points] == [1, 2, 4, 8]
    at = points[1].tpot_ms  # batch 2 exactly at the target; batch 4 above it
    chosen, _, limit = _online(tpot_target_ms=at)
    assert (chosen.batch, limit) == (2, "TPOT target")


def test_a_point_exactly_at_the_ttft_target_meets_it():
    _, points, _ = _online(ttft_target_s=1e4)
    chosen, _, limit = _online(ttft_target_s=points[2].ttft_s)
    assert (chosen.batch, limit) == (4, "TTFT target")


def test_the_limit_is_ttft_when_the_next_batch_is_exactly_at_the_tpot_target():
    _, points, _ = _online(tpot_target_ms=1e6)
    nxt = points[2]  # batch 4: at the TPOT target, a hair over the TTFT target
    chosen, _, limit = _online(tpot_target_ms=nxt.tpot_ms, ttft_target_s=nxt.ttft_s * 0.999)
    assert (chosen.batch, limit) == (2, "TTFT target")


def test_missing_the_slo_at_batch_1_names_the_target_missed():
    _, points, _ = _online(tpot_target_ms=1e6)
    first = points[0]
    # TPOT exactly at its target (met), TTFT over its own: the TTFT is to blame
    chosen, _, why = _online(tpot_target_ms=first.tpot_ms, ttft_target_s=first.ttft_s / 2)
    assert chosen is None
    assert why == (f"misses SLO even at batch 1: TTFT {first.ttft_s:.2f} s > "
                   f"{first.ttft_s / 2:g} s")
    chosen, _, why = _online(tpot_target_ms=first.tpot_ms / 2)
    assert chosen is None and why.startswith("misses SLO even at batch 1: TPOT ")


@pytest.mark.parametrize("max_batch,limit", [(8, "max_num_seqs"), (7, "KV memory")])
def test_the_largest_batch_is_limited_by_the_engine_or_by_memory(max_batch, limit):
    chosen, _, why = choose_batch(TOY, BF16, weight_bytes(TOY, BF16), Hardware(GPU, ENGINE),
                                  toy_workload(tpot_target_ms=1e6), max_batch, 16)
    assert (chosen.batch, why) == (max_batch, limit)


def _offline(max_batch, sequence_overhead_us=100):
    eff = ENGINE.efficiency.model_copy(update=dict(sequence_overhead_us=sequence_overhead_us))
    hw = Hardware(GPU, ENGINE.model_copy(update=dict(efficiency=eff)))
    return choose_batch(TOY, BF16, weight_bytes(TOY, BF16), hw, toy_workload(mode="offline"),
                        max_batch, 16)


def test_offline_stops_at_memory_while_throughput_still_grows():
    chosen, points, limit = _offline(2)
    # batch 1: weights 1.241344 ms + 9 tokens of KV 9.216 us + 2.1 ms + 0.1 ms;
    # batch 2: + 18 tokens of KV 18.432 us + 2.1 ms + 0.2 ms (GEMMs over 3 and 5 tokens,
    # 0.743424 and 1.23904 ms, under the weights; attention math under the KV reads):
    # 1 / 3.45056 ms = 290 tokens/s; 2 / 3.559776 ms = 562 tokens/s
    assert [p.tpot_ms for p in points] == pytest.approx([3.45056, 3.559776], rel=TIGHT, abs=0)
    assert (chosen.batch, limit) == (2, "KV memory")


def test_a_batch_at_exactly_99_percent_of_the_peak_counts_as_the_peak():
    """Offline, batches 1 and 2, both memory-bound: a step takes a + s at batch 1 and
    b + 2s at batch 2, s the per-sequence overhead, a = 1.25056 ms + 2.1 ms (weights and
    9 tokens of KV, step and 4 x 25 us of layer overhead), b = 1.259776 + 2.1 ms (18
    tokens of KV). Batch 1 is at 99% of batch 2's throughput when
    1 / (a + s) = 0.99 x 2 / (b + 2s), i.e. s = 99a - 50b = 163.71664 ms."""
    s_us = (99 * 3.35056e-3 - 50 * 3.359776e-3) * 1e6
    assert s_us == pytest.approx(163716.64, rel=TIGHT, abs=0)
    for _ in range(64):  # the float nearest s, or one a few ulps off, where the tie is exact
        chosen, (one, two), limit = _offline(2, s_us)
        if one.output_tokens_per_s == 0.99 * two.output_tokens_per_s:
            break
        s_us = math.nextafter(s_us, math.inf)
    else:
        pytest.fail("no exact tie near s = 99a - 50b")
    assert one.tpot_ms == pytest.approx((3.35056e-3 + s_us / 1e6) * 1e3, rel=TIGHT, abs=0)
    assert two.tpot_ms == pytest.approx((3.359776e-3 + 2 * s_us / 1e6) * 1e3, rel=TIGHT, abs=0)
    assert (chosen.batch, limit) == (1, "throughput peak")
