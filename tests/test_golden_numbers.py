"""Golden numbers: what `plan`, the CPU roofline, `bench` and `evaluate` print, against
arithmetic written out here from the catalog's numbers, never from tokenomy's helpers.

A change to the cost model, the catalog or a formula fails one of these tests; updating
the arithmetic below makes that change a reviewed diff of figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from tiny import write_tiny_gguf
from tokenomy import plan
from tokenomy.bench.client import RequestRecord
from tokenomy.bench.metrics import measure_rho, summarize, with_cost
from tokenomy.evaluate import metrics
from tokenomy.plan.cpu import CpuHardware, estimate

REL = 1e-9  # the same arithmetic in another order: only rounding may differ
GiB = 2**30

# -- the catalog's numbers ------------------------------------------------------------
# gpus.yaml, H100-SXM
H100_MEMORY = 79.6 * GiB
H100_BANDWIDTH = 3350e9  # bytes/s
H100_PEAK = {"bf16": 989e12, "fp8": 1979e12}  # FLOP/s, dense
NVLINK = 450e9  # bytes/s per GPU
H100_USD_PER_HOUR = 3.99
# engines.yaml, vllm (efficiencies: engine_fits.yaml, fitted on published measurements)
MEMORY_UTILIZATION = 0.9
MAX_NUM_SEQS = 256
BATCHED_TOKENS = 8192
RUNTIME = 1.5 * GiB
EFF_BANDWIDTH = 0.8368
EFF_COMPUTE = 0.5587
STEP_OVERHEAD_S = 0.9692e-3
LAYER_OVERHEAD_S = 19.6899e-6
SEQUENCE_OVERHEAD_S = 30e-6
ALLREDUCE_S = 10e-6
EFF_INTERCONNECT = 0.7
# workloads.yaml, chat: 512 tokens in, 256 out, TPOT <= 30 ms
INPUT, OUTPUT = 512, 256
TPOT_TARGET_S = 30e-3
REQUESTS_PER_S = 10
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class Arch:
    """A catalog model (models.yaml) with its parameters counted by hand."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    linear: int  # attention projections + FFNs / experts, all layers
    other: int  # norms and routers: 16 bit in every scheme
    ffn: int  # widest FFN activation per token (the workspace's)
    expert_linear: int = 0  # routed experts, part of `linear`
    experts: int = 1
    experts_per_token: int = 1

    @property
    def embedding(self) -> int:  # also the size of the (untied) LM head
        return self.vocab * self.hidden

    @property
    def matmul_params(self) -> float:  # per token: linear layers a token uses + LM head
        unused = self.expert_linear * (1 - self.experts_per_token / self.experts)
        return self.linear - unused + self.embedding


# llama-3.1-8b: hidden 4096, 32 layers, FFN 14336, vocab 128256, 32 heads, 8 KV heads x 128
LLAMA_8B = Arch(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256,
                linear=32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336),
                other=32 * 2 * 4096 + 4096, ffn=14336)  # 8.03e9 parameters in all
# llama-3.1-70b: hidden 8192, 80 layers, FFN 28672, vocab 128256, 64 heads, 8 KV heads x 128
LLAMA_70B = Arch(hidden=8192, layers=80, heads=64, kv_heads=8, head_dim=128, vocab=128256,
                 linear=80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672),
                 other=80 * 2 * 8192 + 8192, ffn=28672)  # 70.6e9
# mixtral-8x7b: as llama-3.1-8b's attention, every FFN 8 experts of 14336 (2 per token),
# vocab 32000; routers 8 x 4096 per layer
MIXTRAL = Arch(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=32000,
               linear=32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 8 * 3 * 4096 * 14336),
               expert_linear=32 * 8 * 3 * 4096 * 14336, experts=8, experts_per_token=2,
               other=32 * 2 * 4096 + 4096 + 32 * 8 * 4096, ffn=2 * 14336)  # 46.7e9


@dataclass(frozen=True)
class Bits:
    """A scheme (schemes.yaml) as the arithmetic needs it."""

    linear: float  # bits per linear weight, group scales included
    compute: str
    kernel_bandwidth: float = 1.0  # dequantizing kernels' share of the engine's efficiency
    kernel_compute: float = 1.0


SCHEMES = {"bf16": Bits(16, "bf16"),
           "w4a16": Bits(4 + 16 / 128, "bf16", kernel_bandwidth=0.65, kernel_compute=0.85)}


def _weight_bytes(m: Arch, s: Bits) -> float:
    # linear layers at the scheme's bits; embedding, LM head, norms and routers at 16
    return m.linear * s.linear / 8 + (2 * m.embedding + m.other) * 2


def _kv_bytes_per_token(m: Arch, tp: int) -> float:
    # K and V, each KV head's share on one of `tp` GPUs, every layer, 16 bit
    return 2 * math.ceil(m.kv_heads / tp) * m.head_dim * m.layers * 2


def _step_s(m: Arch, s: Bits, tp: int, decode: int, context: int, prefill: int = 0,
            prefill_context: int = 0) -> tuple[float, float]:
    """(time, compute time) of one vLLM step on H100-SXM GPUs: `decode` sequences each
    adding a token over `context`, plus `prefill` prompt tokens over `prefill_context`."""
    tokens = decode + prefill
    expert = m.expert_linear * s.linear / 8
    untouched = (1 - m.experts_per_token / m.experts) ** tokens if expert else 0.0
    # the embedding table is gathered, not streamed; experts no token routes to: unread
    streamed = (_weight_bytes(m, s) - m.embedding * 2 - expert * untouched) / tp
    bandwidth = H100_BANDWIDTH * EFF_BANDWIDTH
    # the GEMMs: weights streamed vs linear FLOPs
    weights_s = streamed / (bandwidth * s.kernel_bandwidth)
    linear_flops = 2 * m.matmul_params * tokens / tp
    linear_s = linear_flops / (H100_PEAK[s.compute] * EFF_COMPUTE * s.kernel_compute)
    # then attention, a kernel of its own: KV cache read vs attention FLOPs (bf16)
    kv_s = decode * _kv_bytes_per_token(m, tp) * context / bandwidth
    attention_flops = (2 * m.heads * 2 * m.head_dim * m.layers
                       * (decode * context + prefill * prefill_context) / tp)
    attention_s = attention_flops / (H100_PEAK["bf16"] * EFF_COMPUTE)
    comm = 0.0
    if tp > 1:  # two ring all-reduces of the bf16 hidden state per layer
        ring = tokens * m.hidden * 2 * 2 * (tp - 1) / tp / (NVLINK * EFF_INTERCONNECT)
        comm = 2 * m.layers * (ALLREDUCE_S + ring)
    overhead = STEP_OVERHEAD_S + m.layers * LAYER_OVERHEAD_S + decode * SEQUENCE_OVERHEAD_S
    return (max(weights_s, linear_s) + max(kv_s, attention_s) + comm + overhead,
            linear_s + attention_s)


def _chat_point(m: Arch, s: Bits, tp: int, batch: int, n_in: int = INPUT,
                n_out: int = OUTPUT, rps: float = REQUESTS_PER_S) -> dict[str, float]:
    """TPOT, tokens/s and $/1M tokens of `batch` sequences in steady state (chat unless
    told): each step decodes one token per sequence and prefills n_in/n_out prompt tokens
    per sequence."""
    context = n_in + n_out // 2  # mid-answer
    prompt = math.ceil(batch * n_in / n_out)
    tpot, _ = _step_s(m, s, tp, batch, context, prompt, n_in // 2)
    decode_only, _ = _step_s(m, s, tp, batch, context)
    _, prompt_compute = _step_s(m, s, tp, 0, 0, prompt, n_in // 2)
    input_share = min(tpot, max(tpot - decode_only, prompt_compute)) / tpot
    # TTFT: one prompt alone (one chunk, attending to half of it on average) + one step
    prefill_alone, _ = _step_s(m, s, tp, 0, 0, n_in, n_in // 2)
    out_tps = batch / tpot
    in_tps = out_tps * n_in / n_out
    usd_per_s = tp * H100_USD_PER_HOUR / 3600
    capacity_rps = out_tps / n_out
    replicas = max(1, math.ceil(rps / capacity_rps))
    return dict(tpot_ms=tpot * 1e3, ttft_s=prefill_alone + tpot, output_tokens_per_s=out_tps,
                input_tokens_per_s=in_tps, input_time_share=input_share,
                usd_per_m_input=usd_per_s * input_share / in_tps * 1e6,
                usd_per_m_output=usd_per_s * (1 - input_share) / out_tps * 1e6,
                usd_per_m_tokens=usd_per_s / (in_tps + out_tps) * 1e6,
                replicas=replicas, gpus=replicas * tp,
                usd_per_month=replicas * tp * H100_USD_PER_HOUR * HOURS_PER_MONTH,
                utilization=rps / (replicas * capacity_rps))


def _max_sequences(m: Arch, s: Bits, tp: int, context: int = INPUT + OUTPUT) -> int:
    """Full-context sequences whose KV cache fits beside the weights."""
    usable = H100_MEMORY * MEMORY_UTILIZATION
    workspace = (BATCHED_TOKENS * (4 * m.hidden + 2 * m.ffn / tp) * 2  # bf16 activations
                 + MAX_NUM_SEQS * m.vocab / tp * 4 * 2)  # fp32 logits
    room = usable - _weight_bytes(m, s) / tp - workspace - RUNTIME
    return int(room // (_kv_bytes_per_token(m, tp) * context))


PLAN_CASES = [
    # model, its Arch, scheme, TP of the smallest layout, TP plan serves on, batch chosen,
    # and what limits it
    ("llama-3.1-8b", LLAMA_8B, "bf16", 1, 1, 192, "TPOT target"),
    ("llama-3.1-8b", LLAMA_8B, "w4a16", 1, 1, 128, "TPOT target"),
    ("llama-3.1-70b", LLAMA_70B, "bf16", 2, 4, 64, "TPOT target"),  # TP=4 buys KV room
    ("mixtral-8x7b", MIXTRAL, "bf16", 2, 2, 192, "TPOT target"),  # experts dominate
]


@pytest.mark.parametrize("model,arch,scheme,smallest_tp,tp,batch,limit", PLAN_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in PLAN_CASES])
def test_plan_figures_match_the_hand_arithmetic(model, arch, scheme, smallest_tp, tp, batch,
                                                limit):
    row = plan(model, "chat", gpus=["H100-SXM"], schemes=[scheme]).rows[0]
    bits = SCHEMES[scheme]
    weights = _weight_bytes(arch, bits)
    assert row.weights_gb == pytest.approx(weights / 1e9, rel=REL)
    assert row.min_gpus_for_weights == math.ceil(weights / H100_MEMORY)  # the napkin bound
    assert (row.deployment.tp, row.deployment.pp) == (smallest_tp, 1)
    assert row.deployment.weights == pytest.approx(weights / smallest_tp, rel=REL)
    serving = row.serving
    assert (serving.tp, serving.pp) == (tp, 1)
    assert serving.weights == pytest.approx(weights / tp, rel=REL)
    assert serving.kv_per_sequence / serving.context == pytest.approx(
        _kv_bytes_per_token(arch, tp), rel=REL)
    assert serving.max_sequences == _max_sequences(arch, bits, tp)

    # the largest batch meeting the 30 ms TPOT target (the next size misses it), or
    # vLLM's max_num_seqs when even that meets it
    assert row.point.batch == batch and row.batch_limit.startswith(limit)
    expected = _chat_point(arch, bits, tp, batch)
    assert expected["tpot_ms"] <= TPOT_TARGET_S * 1e3
    if limit == "TPOT target":
        assert _chat_point(arch, bits, tp, {64: 96, 128: 192, 192: 256}[batch])["tpot_ms"] > 30
    else:
        assert batch == MAX_NUM_SEQS
    # 8B: the GEMMs over batch + prompt tokens outlast the weights' stream (compute); the
    # 70B on 4 GPUs at batch 64 and Mixtral's experts stream longer than they compute
    assert row.point.bound == ("compute" if model == "llama-3.1-8b" else "memory")
    for field in ("tpot_ms", "ttft_s", "output_tokens_per_s", "input_tokens_per_s",
                  "input_time_share"):
        assert getattr(row.point, field) == pytest.approx(expected[field], rel=REL), field
    assert row.cost.usd_per_hour == pytest.approx(tp * H100_USD_PER_HOUR, rel=REL)
    assert (row.cost.replicas, row.cost.gpus) == (expected["replicas"], expected["gpus"])
    for field in ("usd_per_m_input", "usd_per_m_output", "usd_per_m_tokens", "usd_per_month",
                  "utilization"):
        assert getattr(row.cost, field) == pytest.approx(expected[field], rel=REL), field


def test_offline_batch_is_the_first_within_1_percent_of_the_peak():
    """The batch workload (1024 in, 256 out, 20 requests/s, no latency target): the
    smallest batch within 1% of the best throughput, up to what memory and vLLM allow."""
    bf16 = SCHEMES["bf16"]
    max_batch = min(_max_sequences(LLAMA_8B, bf16, 1, context=1280), MAX_NUM_SEQS)
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    points = {b: _chat_point(LLAMA_8B, bf16, 1, b, 1024, 256, 20) for b in sizes}
    best = max(p["output_tokens_per_s"] for p in points.values())
    chosen = next(b for b in sizes if points[b]["output_tokens_per_s"] >= 0.99 * best)
    assert (max_batch, chosen) == (256, 192)
    row = plan("llama-3.1-8b", "batch", gpus=["H100-SXM"], schemes=["bf16"]).rows[0]
    assert row.serving.max_sequences == _max_sequences(LLAMA_8B, bf16, 1, context=1280)
    assert (row.point.batch, row.batch_limit) == (192, "throughput peak")
    expected = points[192]
    for field in ("tpot_ms", "ttft_s", "output_tokens_per_s", "input_time_share"):
        assert getattr(row.point, field) == pytest.approx(expected[field], rel=REL), field
    assert (row.cost.replicas, row.cost.gpus) == (expected["replicas"], expected["gpus"])
    for field in ("usd_per_m_input", "usd_per_m_output", "usd_per_month", "utilization"):
        assert getattr(row.cost, field) == pytest.approx(expected[field], rel=REL), field


def test_plan_headline_figures():
    """The figures the arithmetic above gives today, rounded, as a reader would quote them:
    a change to either the model or the arithmetic shows up here too."""
    bf16 = _chat_point(LLAMA_8B, SCHEMES["bf16"], 1, 192)
    assert _weight_bytes(LLAMA_8B, SCHEMES["bf16"]) == 16_060_522_496
    assert _weight_bytes(LLAMA_8B, SCHEMES["w4a16"]) == 5_700_591_616
    assert _kv_bytes_per_token(LLAMA_8B, 1) == 131_072  # 128 KiB
    assert _kv_bytes_per_token(LLAMA_70B, 4) == 81_920
    assert bf16["tpot_ms"] == pytest.approx(28.7509, rel=1e-4)
    assert bf16["usd_per_m_output"] == pytest.approx(0.105216, rel=1e-4)
    assert bf16["usd_per_m_input"] == pytest.approx(0.030375, rel=1e-4)
    row = plan("llama-3.1-8b", "chat", gpus=["H100-SXM"], schemes=["bf16"]).rows[0]
    assert row.point.tpot_ms == pytest.approx(28.7509, rel=1e-4)
    assert row.cost.usd_per_m_output == pytest.approx(0.105216, rel=1e-4)


# -- CPU roofline (plan/cpu.py) -----------------------------------------------------------
# A tiny llama GGUF: hidden 256, 4 layers, FFN 512, 8 heads of 32, 2 KV heads, vocab 1000,
# embedding tied to the output. Fixed, slow hardware so no term is negligible.
CPU = CpuHardware(cpu="golden CPU", threads=2, bandwidth_gbs=0.5, gflops=40.0,
                  measured_at="2026-01-01T00:00:00+00:00")
CPU_BANDWIDTH = 0.5e9 * 0.6  # copy bandwidth x EFF_BANDWIDTH
CPU_FLOPS = 40.0e9 * 1.0  # matmul FLOPS x EFF_FLOPS (a prompt chunk: a GEMM)
CPU_DECODE_FLOPS = 40.0e9 * 0.085  # matmul FLOPS x EFF_DECODE_FLOPS (matrix-vector)
CPU_OVERHEAD_S = 4 * 0.1e-3  # layers x LAYER_OVERHEAD_S
CPU_REQUEST_S = 0.1  # REQUEST_OVERHEAD_S: HTTP, template, tokenizing, once per request
TINY_MATMUL_PARAMS = 4 * (2 * 256 * 256 + 2 * 256 * 64 + 3 * 256 * 512) + 1000 * 256


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "golden.gguf")


@pytest.mark.parametrize("batch,bound", [(1, "memory"), (8, "compute")])
def test_cpu_roofline_matches_the_hand_arithmetic(tiny_gguf, batch, bound):
    size = tiny_gguf.stat().st_size  # the weights: the whole GGUF, read every step
    e = estimate(tiny_gguf, 100, 50, batch=batch, hardware=CPU)
    # prefill: one ubatch of 100 tokens, attending to 50 tokens on average
    prefill_flops = 2 * TINY_MATMUL_PARAMS * 100 + 2 * 8 * (2 * 32) * 100 * 4 * 50
    prefill_s = (max(size / CPU_BANDWIDTH, prefill_flops / CPU_FLOPS) + CPU_OVERHEAD_S
                 + CPU_REQUEST_S)
    # decode: `batch` tokens over 100 + 25 tokens of f16 KV cache (K and V, 2 heads x 32)
    kv_bytes = batch * 2 * 2 * 32 * 4 * 125 * 2
    decode_memory = (size + kv_bytes) / CPU_BANDWIDTH
    decode_flops = 2 * TINY_MATMUL_PARAMS * batch + 2 * 8 * (2 * 32) * batch * 4 * 125
    decode_compute = decode_flops / CPU_DECODE_FLOPS
    step_s = max(decode_memory, decode_compute) + CPU_OVERHEAD_S
    machine_s = prefill_s + 50 * step_s / batch  # per request: prefills are not shared

    assert e.weight_bytes == size and e.matmul_params == TINY_MATMUL_PARAMS
    assert e.prefill_tokens_per_s == pytest.approx(100 / prefill_s, rel=REL)
    assert e.decode_step_s == pytest.approx(step_s, rel=REL)
    assert e.decode_bound == bound
    assert (decode_memory > decode_compute) is (bound == "memory")
    assert e.request_s == pytest.approx(prefill_s + 50 * step_s, rel=REL)
    assert e.requests_per_s == pytest.approx(1 / machine_s, rel=REL)
    assert e.output_tokens_per_s == pytest.approx(50 / machine_s, rel=REL)
    assert e.total_tokens_per_s == pytest.approx(150 / machine_s, rel=REL)
    assert e.machine_s_per_1m_input == pytest.approx(prefill_s / 100 * 1e6, rel=REL)
    assert e.machine_s_per_1m_output == pytest.approx(step_s / batch * 1e6, rel=REL)
    assert e.rho == pytest.approx((prefill_s / 100) / (step_s / batch), rel=REL)


def test_openvino_roofline_matches_the_hand_arithmetic(tiny_gguf):
    """The same roofline with OpenVINO GenAI's factors (plan/cpu.py ENGINE_FACTORS): its
    decode is one GEMM over the batch (0.42 of the matmul peak, not 0.085), a larger
    fixed cost per layer (0.86 ms) and per sequence (0.52 ms) per step."""
    size = tiny_gguf.stat().st_size
    e = estimate(tiny_gguf, 100, 50, batch=8, hardware=CPU, engine="openvino")
    prefill_flops = 2 * TINY_MATMUL_PARAMS * 100 + 2 * 8 * (2 * 32) * 100 * 4 * 50
    prefill_s = (max(size / CPU_BANDWIDTH, prefill_flops / (40.0e9 * 0.91)) + 4 * 0.86e-3
                 + 0.11)
    kv_bytes = 8 * 2 * 2 * 32 * 4 * 125 * 2
    decode_flops = 2 * TINY_MATMUL_PARAMS * 8 + 2 * 8 * (2 * 32) * 8 * 4 * 125
    step_s = (max((size + kv_bytes) / CPU_BANDWIDTH, decode_flops / (40.0e9 * 0.42))
              + 4 * 0.86e-3 + 8 * 0.52e-3)
    assert e.factors.engine == "openvino"
    assert e.prefill_tokens_per_s == pytest.approx(100 / prefill_s, rel=REL)
    assert e.decode_step_s == pytest.approx(step_s, rel=REL)
    assert e.output_tokens_per_s == pytest.approx(50 / (prefill_s + 50 * step_s / 8), rel=REL)
    assert "openvino" in e.method


# -- bench: $ per 1M tokens from a recorded run (bench/metrics.py) --------------------------
def _request(i, start, ttft, tokens, gap, prompt):
    chunks = [start + ttft + k * gap for k in range(tokens)]
    return RequestRecord(index=i, start=start, end=chunks[-1], chunk_times=chunks,
                         output_tokens=tokens, prompt_tokens=prompt, usage=True,
                         finish_reason="stop")


def test_bench_cost_of_a_recorded_run():
    records = [_request(0, 0.00, 0.20, 10, 0.05, 40), _request(1, 0.00, 0.30, 10, 0.05, 60),
               _request(2, 0.65, 0.25, 5, 0.10, 50), _request(3, 0.75, 0.35, 20, 0.05, 50)]
    run = summarize(records, 2.5, [0] * 4, concurrency=2, rate=None, slo_ttft_s=0.32,
                    slo_tpot_s=0.06)
    assert (run.input_tokens, run.output_tokens) == (200, 45)
    # e2e: 0.65, 0.75, 0.65, 1.30 s; time in flight over the run (Little's law)
    assert run.concurrency_observed == pytest.approx(3.35 / 2.5, rel=REL)
    assert run.output_tokens_per_s == pytest.approx(45 / 2.5, rel=REL)
    # meeting both SLOs: requests 0 and 1 (2 streams at 0.1 s/token, 3 waits 0.35 s)
    assert run.goodput_rps == pytest.approx(2 / 2.5, rel=REL)

    rho = measure_rho(records, [0] * 4)
    # TTFT per prompt token: 1.1 s / 200; TPOT: 0.45 + 0.45 + 0.4 + 0.95 s over 41 steps
    assert rho == pytest.approx((1.1 / 200) / (2.25 / 41), rel=REL)
    priced = with_cost(run, rho, usd_per_hour=1.8)
    s_out = 2.5 * 1e6 / (45 + rho * 200)  # so 200 * s_in + 45 * s_out = the 2.5 s run
    assert priced.machine_s_per_1m_output == pytest.approx(s_out, rel=REL)
    assert priced.machine_s_per_1m_input == pytest.approx(rho * s_out, rel=REL)
    assert priced.usd_per_1m_output == pytest.approx(1.8 / 3600 * s_out, rel=REL)
    assert priced.usd_per_1m_input == pytest.approx(1.8 / 3600 * rho * s_out, rel=REL)
    assert priced.usd_per_1m_tokens == pytest.approx(1.8 / 3600 * 2.5 / 245 * 1e6, rel=REL)


# -- evaluate: KL divergence on hand-made distributions (evaluate/metrics.py) -------------
def test_kld_of_hand_made_distributions():
    p = np.log(np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]))  # base, 2 positions x 3 tokens
    q = np.log(np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))  # candidate
    targets = np.array([0, 1])
    ref = metrics.reference_from_logp(p, targets, k=2)  # top 2 kept, 1 token in the bucket
    scores = metrics.compare(ref, q, targets)
    # KL(P||Q) = 0.5 ln(0.5/0.2) + 0.3 ln(0.3/0.3) + 0.2 ln(0.2/0.5) = 0.3 ln 2.5
    assert scores.kld[0] == pytest.approx(0.3 * math.log(2.5), rel=1e-6)
    assert scores.kld[1] == pytest.approx(0.0, abs=1e-7)
    assert scores.nll.tolist() == pytest.approx([-math.log(0.2), -math.log(0.3)], rel=1e-12)
    assert scores.top1_match.tolist() == [False, True]
    assert metrics.perplexity(scores.nll) == pytest.approx(1 / math.sqrt(0.2 * 0.3), rel=1e-12)
