"""Measured CPU speed of a GGUF on this machine, through llama.cpp and through OpenVINO
GenAI: prefill and decode tokens/s with all cores, one stream, turned into $/1M tokens at a
stated $/CPU-hour."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from tokenomy.capability import cpu_info, usable_cores

PREFILL_TOKENS = 256
DECODE_TOKENS = 64
# On-demand price of a 2-vCPU, 8 GiB general-purpose instance (AWS m7i.large, us-east-1,
# $0.1008/h, https://aws.amazon.com/ec2/pricing/on-demand/); override with --cpu-price.
DEFAULT_CPU_USD_PER_HOUR = 0.1008


class CpuSpeed(BaseModel):
    cpu: str
    threads: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float  # single stream
    prefill_tokens: int = PREFILL_TOKENS
    decode_tokens: int = DECODE_TOKENS
    engine: str = "llamacpp"  # llamacpp | openvino (the CPU planner's names)
    # the 1-minute load average per core when it was measured (None: before this was kept):
    # speeds measured at different loads do not compare
    load_per_core: float | None = None

    @property
    def engine_label(self) -> str:
        return {"llamacpp": "llama.cpp", "openvino": "OpenVINO GenAI"}.get(self.engine,
                                                                           self.engine)


def cpu_name() -> str:
    return cpu_info().name


def load_per_core() -> float:
    import os

    return round(os.getloadavg()[0] / max(os.cpu_count() or 1, 1), 2)


def measure(gguf: Path, repeats: int = 2) -> CpuSpeed:
    """Best of `repeats`: prefill of PREFILL_TOKENS tokens, then DECODE_TOKENS greedy
    decode steps, one sequence (llama.cpp's server default slot)."""
    import numpy as np

    from tokenomy.compress.gguf_backend import load_llama

    load = load_per_core()
    llm = load_llama(gguf, n_ctx=PREFILL_TOKENS + DECODE_TOKENS + 8)
    vocab = llm.n_vocab()  # ids inside any vocabulary, a tiny one too
    prompt = [(100 + i) % vocab for i in range(PREFILL_TOKENS)]
    best_prefill, best_decode = 0.0, 0.0
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = PREFILL_TOKENS / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        decode = DECODE_TOKENS / (time.perf_counter() - start)
        best_prefill, best_decode = max(best_prefill, prefill), max(best_decode, decode)
    return CpuSpeed(cpu=cpu_name(), threads=usable_cores(), load_per_core=load,
                    prefill_tokens_per_s=best_prefill, decode_tokens_per_s=best_decode)


def measure_openvino(gguf: Path, repeats: int = 2) -> CpuSpeed:
    """The same measurement through OpenVINO GenAI reading the GGUF (its compiled CPU
    kernels): best of `repeats` of a ~PREFILL_TOKENS-token prompt and DECODE_TOKENS
    generated tokens, one sequence, from the pipeline's own TTFT and TPOT."""
    import openvino_genai as ov

    load = load_per_core()
    pipe = ov.LLMPipeline(str(gguf), "CPU")
    config = ov.GenerationConfig()
    config.max_new_tokens, config.min_new_tokens, config.ignore_eos = (
        DECODE_TOKENS, DECODE_TOKENS, True)
    tokenizer = pipe.get_tokenizer()
    prompt = ""
    while tokenizer.encode(prompt).input_ids.get_shape()[1] < PREFILL_TOKENS:
        prompt += "the quick brown fox jumps over the lazy dog "
    best_prefill, best_decode, n_in = 0.0, 0.0, PREFILL_TOKENS
    for _ in range(repeats):
        metrics = pipe.generate([prompt], config).perf_metrics
        n_in = metrics.get_num_input_tokens()
        best_prefill = max(best_prefill, n_in / (metrics.get_ttft().mean / 1e3))
        best_decode = max(best_decode, 1e3 / metrics.get_tpot().mean)
    return CpuSpeed(cpu=cpu_name(), threads=usable_cores(), prefill_tokens_per_s=best_prefill,
                    decode_tokens_per_s=best_decode, prefill_tokens=n_in, engine="openvino",
                    load_per_core=load)


def cost_per_m(speed: CpuSpeed, usd_per_hour: float, input_tokens: int,
               output_tokens: int) -> tuple[float, float]:
    """($/1M input, $/1M output) for one request stream at the measured rates."""
    usd_per_s = usd_per_hour / 3600
    per_in = usd_per_s / speed.prefill_tokens_per_s * 1e6
    per_out = usd_per_s / speed.decode_tokens_per_s * 1e6
    return per_in, per_out
