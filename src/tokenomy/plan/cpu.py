"""ESTIMATED speed and cost of llama.cpp serving a GGUF on this machine's CPU: a roofline
over the CPU's own memory bandwidth and matmul FLOPS, measured once and cached.

    step (t tokens) = max((weight_bytes + kv_bytes) / (BW * EFF_BANDWIDTH),
                          (2 * matmul_params * t + attention FLOPs) / (FLOPS * eff))
                      + layers * LAYER_OVERHEAD_S
    eff = EFF_FLOPS for a prompt chunk, EFF_DECODE_FLOPS for a decode step

A decode step of b sequences carries t = b tokens; a prompt of n tokens is one step of
t = n. BW is a STREAM-style copy (bytes read + written per second, numpy, all threads),
FLOPS a float32 numpy matmul (OpenBLAS). The serving engine is llama.cpp's own server
(tokenomy.serve.llamacpp_server): continuous batching decodes up to `parallel` sequences
per step, so at concurrency b a step carries b tokens and its weight reads are shared.

Not modelled: the server's per-token HTTP/SSE work and a load generator sharing the
cores; `tokenomy bench` prints measured / estimated, and `tokenomy calibrate` fits the
factors below to this machine's measurements.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from tokenomy.capability import cpu_info, usable_cores
from tokenomy.errors import InvalidInputError
from tokenomy.home import cache_dir
from tokenomy.modelspec import ModelSpec

# Achieved fractions of the measured peaks, and a fixed cost per layer per step (graph
# nodes, thread barriers). Measured with `tokenomy bench` against llama.cpp's server
# (xllamacpp 2026.10, AVX2 build) on a 2-vCPU Xeon, SmolLM2-135M Q4_1: prefill (a GEMM
# over the prompt's tokens, int8 dot products) runs near numpy's fp32 matmul peak; decode
# (quantized matrix-vector products, one per sequence) at about a tenth of it, so its
# steps grow almost linearly with the batch (TPOT 14 ms at 1, 89 ms at 8 concurrent).
# EFF_DECODE_FLOPS and REQUEST_OVERHEAD_S: `tokenomy calibrate` on a concurrency-1 ShareGPT
# run there (benchmarks/cpu_calibration.py), rounded.
EFF_BANDWIDTH = 0.6
EFF_FLOPS = 1.0  # prefill
EFF_DECODE_FLOPS = 0.085  # decode steps
LAYER_OVERHEAD_S = 0.1e-3
REQUEST_OVERHEAD_S = 0.1
OPENVINO_FLOPS = 0.91
OPENVINO_DECODE_FLOPS = 0.42
OPENVINO_LAYER_OVERHEAD_S = 0.86e-3
OPENVINO_SEQUENCE_OVERHEAD_S = 0.52e-3
OPENVINO_REQUEST_OVERHEAD_S = 0.11
KV_BYTES = 2  # llama.cpp's default f16 KV cache
UBATCH = 512  # llama.cpp's default n_ubatch
BUSY_LOAD = 0.25  # load average per thread above which a measurement is not a peak
COPY_BYTES = 256 * 2**20
MATMUL_N = 1024


class CpuFactors(BaseModel):
    """The achieved fractions and fixed costs the roofline applies for one engine: the
    defaults (llama.cpp above, others in ENGINE_FACTORS), or a profile fitted by
    `tokenomy calibrate` to this machine's bench results."""

    engine: str = "llamacpp"
    eff_bandwidth: float = EFF_BANDWIDTH
    eff_flops: float = EFF_FLOPS
    eff_decode_flops: float = EFF_DECODE_FLOPS
    layer_overhead_s: float = LAYER_OVERHEAD_S
    sequence_overhead_s: float = 0.0  # per decoding sequence per step (sampling, SSE)
    # per request: HTTP, chat template, tokenizing, slot set-up (TTFT 0.15 s for a 32-token
    # prompt whose compute takes 0.03 s, measured as above)
    request_overhead_s: float = REQUEST_OVERHEAD_S
    calibrated: str | None = None  # 'calibrated on N measurements (...)', when fitted


# OpenVINO GenAI's continuous batching decodes all running sequences as one GEMM over
# the compressed weights (oneDNN/AMX or AVX-512 kernels pick the ISA at run time), so a
# decode step costs little more at 16 sequences than at 1; each step pays a larger fixed
# cost (its graph's nodes per layer, the pipeline's scheduler). Fitted with `tokenomy
# calibrate` on benchmarks/cpu_engines.py runs at concurrency 1 and 4 (2-vCPU Xeon with
# AVX-512/AMX, SmolLM2-135M Q4_1, synthetic 64:64, 2026-11-30, other jobs on the cores)
# and checked at 16: 4.27x estimated against 4.83x measured over concurrency 1 (-12%).
ENGINE_FACTORS = {
    "llamacpp": CpuFactors(),
    "openvino": CpuFactors(engine="openvino", eff_flops=OPENVINO_FLOPS,
                           eff_decode_flops=OPENVINO_DECODE_FLOPS,
                           layer_overhead_s=OPENVINO_LAYER_OVERHEAD_S,
                           sequence_overhead_s=OPENVINO_SEQUENCE_OVERHEAD_S,
                           request_overhead_s=OPENVINO_REQUEST_OVERHEAD_S),
}


def engine_factors(engine: str = "llamacpp") -> CpuFactors:
    """The default factors of a CPU serving engine: 'llamacpp' or 'openvino'."""
    if engine not in ENGINE_FACTORS:
        raise InvalidInputError(f"no CPU model of engine {engine!r}; the CPU planner models "
                                f"{', '.join(ENGINE_FACTORS)}")
    return ENGINE_FACTORS[engine]


class CpuHardware(BaseModel):
    """This CPU's measured peaks (cached per CPU model and thread count)."""

    cpu: str
    threads: int
    bandwidth_gbs: float  # copy: (read + write) bytes / s
    gflops: float  # float32 matmul
    measured_at: str
    load_average: float | None = None  # 1-minute, when measured
    method: str = (f"best of 5 numpy copies of {COPY_BYTES >> 20} MiB over all threads; "
                   f"best of 5 float32 {MATMUL_N}x{MATMUL_N} numpy matmuls (OpenBLAS)")


class CpuEstimate(BaseModel):
    """Estimated speed and machine time of one CPU engine for one workload on this CPU."""

    model: str
    weight_bytes: int  # the GGUF file
    matmul_params: float  # per token: linear layers + LM head
    hardware: CpuHardware
    factors: CpuFactors = CpuFactors()
    batch: int  # sequences decoded together (continuous batching)
    input_tokens: float  # per request
    output_tokens: float
    prefill_tokens_per_s: float  # one prompt of input_tokens
    decode_step_s: float
    decode_bound: str  # memory | compute | overhead (the largest term)
    request_s: float  # one request alone: prefill + decode
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    machine_s_per_1m_input: float
    machine_s_per_1m_output: float
    rho: float  # time per prompt token / time per output token

    @property
    def method(self) -> str:
        basis = self.factors.calibrated or f"{self.factors.engine}'s default factors"
        return ("roofline: max(bytes / (copy bandwidth x eff), FLOPs / (matmul FLOPS x eff)) "
                f"+ per-layer and per-sequence overhead, per {self.factors.engine} step; "
                f"weights = GGUF size; {basis}")


def _cache_file(cpu: str, threads: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    return cache_dir("hardware") / f"{slug}-{threads}t.json"


def _copy_bandwidth(threads: int) -> float:
    import numpy as np

    n = COPY_BYTES // 4 // threads
    src = [np.ones(n, dtype=np.float32) for _ in range(threads)]
    dst = [np.empty_like(s) for s in src]
    best = 0.0
    for _ in range(5):
        workers = [threading.Thread(target=np.copyto, args=pair)
                   for pair in zip(dst, src, strict=True)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, 2 * n * 4 * threads / (time.perf_counter() - start))
    return best / 1e9


def _matmul_gflops() -> float:
    import numpy as np

    a = np.random.default_rng(0).random((MATMUL_N, MATMUL_N), dtype=np.float32)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        best = max(best, 2 * MATMUL_N**3 / (time.perf_counter() - start))
    return best / 1e9


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def measure_hardware(refresh: bool = False) -> CpuHardware:
    """This CPU's copy bandwidth and matmul FLOPS (~1 s), cached by CPU model + threads.

    They are peaks: a cached figure taken while other work loaded the machine is measured
    again once it is quieter, and the cache keeps the best of both."""
    cpu, threads = cpu_info().name, usable_cores()
    path, load = _cache_file(cpu, threads), _load_average()
    cached = None
    if path.is_file():
        with contextlib.suppress(ValidationError, ValueError):  # damaged: measure again
            cached = CpuHardware.model_validate_json(path.read_text())
    busy = cached is not None and (cached.load_average or 0) > BUSY_LOAD * threads
    quieter = busy and load is not None and load < (cached.load_average or 0) / 2
    if cached is not None and not refresh and not quieter:
        return cached
    hw = CpuHardware(cpu=cpu, threads=threads, bandwidth_gbs=_copy_bandwidth(threads),
                     gflops=_matmul_gflops(), load_average=load,
                     measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if cached is not None:
        hw = hw.model_copy(update={"bandwidth_gbs": max(hw.bandwidth_gbs, cached.bandwidth_gbs),
                                   "gflops": max(hw.gflops, cached.gflops)})
    path.write_text(json.dumps(hw.model_dump(), indent=2))
    return hw


@functools.lru_cache(maxsize=16)
def _spec(gguf: Path, _mtime_ns: int) -> ModelSpec:
    """GGUF metadata (+ the catalog's name for a known architecture); reading it takes
    seconds, so it is kept per file version."""
    from tokenomy.catalog import default_catalog
    from tokenomy.plan.workload import resolve_model

    return resolve_model(gguf, default_catalog())


def _step(spec: ModelSpec, weight_bytes: int, hw: CpuHardware, tokens: int,
          kv_bytes: float, attention_flops: float, f: CpuFactors,
          sequences: int = 0) -> tuple[float, str]:
    memory = (weight_bytes + kv_bytes) / (hw.bandwidth_gbs * 1e9 * f.eff_bandwidth)
    flops = 2 * spec.matmul_params_per_token * tokens + attention_flops
    eff = f.eff_decode_flops if sequences else f.eff_flops  # decode step or prompt chunk
    compute = flops / (hw.gflops * 1e9 * eff)
    overhead = spec.num_layers * f.layer_overhead_s + sequences * f.sequence_overhead_s
    bound = "memory" if memory >= compute else "compute"
    if overhead > max(memory, compute):
        bound = "overhead"
    return max(memory, compute) + overhead, bound


def _prefill_s(spec: ModelSpec, weight_bytes: int, hw: CpuHardware, tokens: int,
               f: CpuFactors) -> float:
    """A prompt in llama.cpp's ubatches of UBATCH tokens, one step each."""
    total, done = 0.0, 0
    while done < tokens:
        chunk = min(UBATCH, tokens - done)
        attention = spec.attention_flops(chunk, done + chunk // 2)
        total += _step(spec, weight_bytes, hw, chunk, 0.0, attention, f)[0]
        done += chunk
    return total


def estimate(gguf: str | Path, input_tokens: float, output_tokens: float, batch: int = 1,
             hardware: CpuHardware | None = None, factors: CpuFactors | None = None,
             engine: str = "llamacpp") -> CpuEstimate:
    """`engine` (llama.cpp's server or OpenVINO GenAI) on this CPU, requests of
    `input_tokens` prompt and `output_tokens` answer tokens, `batch` sequences decoding
    together. `factors` (a calibrated profile) replace the engine's defaults."""
    gguf = Path(gguf)
    spec = _spec(gguf.resolve(), gguf.stat().st_mtime_ns)
    hw = hardware or measure_hardware()
    f = factors or engine_factors(engine)
    size = gguf.stat().st_size
    n_in, n_out = max(1, round(input_tokens)), max(1.0, output_tokens)
    prefill_s = _prefill_s(spec, size, hw, n_in, f) + f.request_overhead_s
    context = n_in + int(n_out) // 2
    kv = batch * spec.kv_elements(context) * KV_BYTES
    step_s, bound = _step(spec, size, hw, batch, kv, spec.attention_flops(batch, context), f,
                          sequences=batch)
    # One request alone takes its prefill and n_out steps; with `batch` sequences the
    # decode steps are shared and the prefills (one at a time) are not.
    request_s = prefill_s + n_out * step_s
    machine_per_request = prefill_s + n_out * step_s / batch
    s_per_in, s_per_out = prefill_s / n_in, step_s / batch
    return CpuEstimate(
        model=spec.name, weight_bytes=size, matmul_params=spec.matmul_params_per_token,
        hardware=hw, factors=f, batch=batch, input_tokens=input_tokens,
        output_tokens=output_tokens,
        prefill_tokens_per_s=n_in / prefill_s, decode_step_s=step_s, decode_bound=bound,
        request_s=request_s, requests_per_s=1 / machine_per_request,
        output_tokens_per_s=n_out / machine_per_request,
        total_tokens_per_s=(n_in + n_out) / machine_per_request,
        machine_s_per_1m_input=s_per_in * 1e6, machine_s_per_1m_output=s_per_out * 1e6,
        rho=s_per_in / s_per_out,
    )


def estimate_machine_seconds(gguf: str | Path, input_tokens: int = 256,
                             output_tokens: int = 128, max_batch: int = 8,
                             factors: CpuFactors | None = None, engine: str = "llamacpp"
                             ) -> list[tuple[float, float, float]]:
    """(load, machine-s per 1M input, per 1M output) for `engine`'s server at loads 1, 2,
    4 ... `max_batch`: continuous batching decodes that many sequences per step."""
    points, batch = [], 1
    while True:
        e = estimate(gguf, input_tokens, output_tokens, batch=batch, factors=factors,
                     engine=engine)
        points.append((float(batch), e.machine_s_per_1m_input, e.machine_s_per_1m_output))
        if batch >= max_batch:
            return points
        batch = min(2 * batch, max_batch)


def batching_gain(gguf: str | Path, input_tokens: float, output_tokens: float, streams: int,
                  engine: str = "llamacpp") -> float:
    """Output tok/s of `engine` serving `streams` sequences together over one alone, for
    requests of these lengths: what continuous batching buys on this CPU (estimated)."""
    def speed(batch: int) -> float:
        return estimate(gguf, input_tokens, output_tokens, batch=batch,
                        engine=engine).output_tokens_per_s
    return speed(streams) / speed(1)
