"""Operating points (batch size -> latency, throughput) and what they cost.

In steady state a deployment decodes B sequences; each request brings its prompt in
chunks while it streams its answer, so a step carries B decode tokens plus
B * input/output prefill tokens (vLLM's chunked prefill). TPOT is that step's time,
output tokens/s = B / TPOT. GPU time is split between input and output tokens by what
the prefill adds to the step (at least its compute time), so $/1M input tokens is low
while decode is memory-bound and rises once prefill competes for compute.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from tokenomy.catalog import Scheme, Workload
from tokenomy.modelspec import ModelSpec
from tokenomy.plan.memory import WeightBytes
from tokenomy.plan.perf import Hardware, prefill_time_s, step_time

BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
HOURS_PER_MONTH = 730


class OperatingPoint(BaseModel):
    """Estimated performance of one deployment at one concurrency."""

    model_config = ConfigDict(frozen=True)

    batch: int  # concurrent sequences in the deployment
    ttft_s: float  # prefill of one prompt + one step of queueing
    tpot_ms: float
    output_tokens_per_s: float  # whole deployment
    input_tokens_per_s: float
    bound: str  # memory | compute, of the steady-state step (decode + chunked prefill)
    input_time_share: float  # share of GPU time spent on prompts


def operating_point(
    spec: ModelSpec,
    scheme: Scheme,
    weights: WeightBytes,
    hw: Hardware,
    workload: Workload,
    batch: int,
    kv_bits: int,
    prefill_s: float | None = None,
) -> OperatingPoint:
    seqs = math.ceil(batch / hw.pp)  # sequences per pipeline micro-batch
    context = workload.input_tokens + workload.output_tokens // 2
    prompt_tokens = math.ceil(seqs * workload.input_tokens / workload.output_tokens)
    common = dict(decode_seqs=seqs, context=context, kv_bits=kv_bits)
    decode = step_time(spec, scheme, weights, hw, **common)
    mixed = step_time(
        spec, scheme, weights, hw, **common,
        prefill_tokens=prompt_tokens, prefill_context=workload.input_tokens // 2,
    )
    prompt_only = step_time(
        spec, scheme, weights, hw, decode_seqs=0, context=0, kv_bits=kv_bits,
        prefill_tokens=prompt_tokens, prefill_context=workload.input_tokens // 2,
    )
    tpot = mixed.total_s
    input_time = min(tpot, max(tpot - decode.total_s, prompt_only.all_compute_s))
    if prefill_s is None:
        prefill_s = prefill_time_s(spec, scheme, weights, hw, workload.input_tokens, kv_bits)
    out_tps = batch / tpot
    return OperatingPoint(
        batch=batch,
        ttft_s=prefill_s + tpot,
        tpot_ms=tpot * 1e3,
        output_tokens_per_s=out_tps,
        input_tokens_per_s=out_tps * workload.input_tokens / workload.output_tokens,
        bound=mixed.bound,
        input_time_share=input_time / tpot,
    )


class Cost(BaseModel):
    """Dollars of one deployment at one operating point, and of the stated traffic."""

    model_config = ConfigDict(frozen=True)

    usd_per_hour: float  # the deployment (all its GPUs)
    usd_per_m_input: float
    usd_per_m_output: float
    usd_per_m_tokens: float  # blended over input + output
    replicas: int  # deployments needed for the traffic
    gpus: int
    usd_per_month: float
    utilization: float  # traffic / capacity of the replicas


def cost(point: OperatingPoint, gpus_per_replica: int, usd_per_gpu_hour: float,
         workload: Workload) -> Cost:
    usd_per_s = gpus_per_replica * usd_per_gpu_hour / 3600
    share = point.input_time_share
    per_m_in = usd_per_s * share / point.input_tokens_per_s * 1e6
    per_m_out = usd_per_s * (1 - share) / point.output_tokens_per_s * 1e6
    total_tps = point.input_tokens_per_s + point.output_tokens_per_s
    capacity_rps = point.output_tokens_per_s / workload.output_tokens
    replicas = max(1, math.ceil(workload.requests_per_s / capacity_rps))
    return Cost(
        usd_per_hour=usd_per_s * 3600,
        usd_per_m_input=per_m_in,
        usd_per_m_output=per_m_out,
        usd_per_m_tokens=usd_per_s / total_tps * 1e6,
        replicas=replicas,
        gpus=replicas * gpus_per_replica,
        usd_per_month=replicas * usd_per_s * 3600 * HOURS_PER_MONTH,
        utilization=workload.requests_per_s / (replicas * capacity_rps),
    )


def choose_batch(
    spec: ModelSpec,
    scheme: Scheme,
    weights: WeightBytes,
    hw: Hardware,
    workload: Workload,
    max_batch: int,
    kv_bits: int,
) -> tuple[OperatingPoint | None, list[OperatingPoint], str]:
    """The batch to run at: online, the largest meeting the TTFT/TPOT targets; offline,
    the one with the highest throughput. Returns (chosen, all evaluated, why it stops)."""
    prefill_s = prefill_time_s(spec, scheme, weights, hw, workload.input_tokens, kv_bits)
    sizes = sorted({b for b in BATCH_SIZES if b < max_batch} | {max_batch})
    points = [
        operating_point(spec, scheme, weights, hw, workload, b, kv_bits, prefill_s)
        for b in sizes
    ]
    chosen, limit = select_batch(points, workload, max_batch, hw)
    return chosen, points, limit


def select_batch(points: list[OperatingPoint], workload: Workload, max_batch: int,
                 hw: Hardware) -> tuple[OperatingPoint | None, str]:
    """Among `points` (one per batch size, ascending, the last at `max_batch`): online,
    the largest meeting the TTFT/TPOT targets; offline, the first within 1% of the
    throughput peak. Returns (chosen, why it stops there)."""
    if workload.mode == "offline":
        best = max(p.output_tokens_per_s for p in points)
        chosen = next(p for p in points if p.output_tokens_per_s >= 0.99 * best)
        limit = "throughput peak" if chosen.batch < max_batch else _memory_limit(max_batch, hw)
        return chosen, limit
    ok = [p for p in points if _meets(p, workload)]
    if not ok:
        first = points[0]
        why = (f"TPOT {first.tpot_ms:.0f} ms > {workload.tpot_target_ms:g} ms"
               if workload.tpot_target_ms and first.tpot_ms > workload.tpot_target_ms
               else f"TTFT {first.ttft_s:.2f} s > {workload.ttft_target_s:g} s")
        return None, f"misses SLO even at batch 1: {why}"
    chosen = ok[-1]
    if chosen.batch == max_batch:
        return chosen, _memory_limit(max_batch, hw)
    nxt = points[points.index(chosen) + 1]
    limit = ("TPOT target" if workload.tpot_target_ms and nxt.tpot_ms > workload.tpot_target_ms
             else "TTFT target")
    return chosen, limit


def _memory_limit(max_batch: int, hw: Hardware) -> str:
    return "max_num_seqs" if max_batch == hw.engine.max_num_seqs else "KV memory"


def _meets(p: OperatingPoint, w: Workload) -> bool:
    if w.tpot_target_ms and p.tpot_ms > w.tpot_target_ms:
        return False
    return not (w.ttft_target_s and p.ttft_s > w.ttft_target_s)


class Ranges(BaseModel):
    """The interval each estimated figure may fall in, from the engine profile's band
    (measured / predicted speed, 10th-90th percentile): speeds scale with it, time and
    dollars inversely. Every interval contains its point."""

    model_config = ConfigDict(frozen=True)

    basis: str  # what the band rests on
    tokens_per_s: tuple[float, float]  # output, whole deployment
    tpot_ms: tuple[float, float]
    ttft_s: tuple[float, float]
    usd_per_m_input: tuple[float, float]
    usd_per_m_output: tuple[float, float]
    usd_per_m_tokens: tuple[float, float]
    usd_per_month: tuple[float, float]


def ranges(point: OperatingPoint, money: Cost, low: float, high: float, basis: str) -> Ranges:
    def speed(x: float) -> tuple[float, float]:
        return (x * low, x * high)

    def slowness(x: float) -> tuple[float, float]:
        return (x / high, x / low)

    return Ranges(basis=basis, tokens_per_s=speed(point.output_tokens_per_s),
                  tpot_ms=slowness(point.tpot_ms), ttft_s=slowness(point.ttft_s),
                  usd_per_m_input=slowness(money.usd_per_m_input),
                  usd_per_m_output=slowness(money.usd_per_m_output),
                  usd_per_m_tokens=slowness(money.usd_per_m_tokens),
                  usd_per_month=slowness(money.usd_per_month))
