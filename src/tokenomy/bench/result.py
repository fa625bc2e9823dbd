"""What `tokenomy bench` is asked to do and what it measured; both round-trip to JSON.

The gateway's cost meter reads ``runs[*].concurrency_observed``,
``runs[*].machine_s_per_1m_input`` and ``runs[*].machine_s_per_1m_output``: keep them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tokenomy.errors import InvalidInputError

SCHEMA_VERSION = 1
TokenCounts = Literal["usage", "counted", "mixed"]


class BenchConfig(BaseModel):
    """One bench: the target, the workload, the load profile and its bounds, the price."""

    target: str = "embedded"  # 'embedded' or an OpenAI-compatible base URL ending in /v1
    model: str | None = None  # embedded: a GGUF to serve instead of the embedded SmolLM2
    engine: Literal["llamacpp", "openvino"] = "llamacpp"  # embedded: which engine serves it
    model_id: str | None = None  # URL: the id to request (default: the first of GET /models)
    dataset: str = "sharegpt"  # 'sharegpt' or a .jsonl file of conversations
    synthetic: tuple[int, int] | None = None  # fixed (input, output) tokens instead
    max_input_tokens: int = Field(default=512, gt=0)
    max_output_tokens: int = Field(default=128, gt=1)
    concurrency: int | None = Field(default=None, gt=0)
    rate: float | None = Field(default=None, gt=0)  # requests/s, Poisson arrivals
    sweep: bool = False
    max_concurrency: int = Field(default=4, gt=0)
    levels: list[int] = []  # concurrency levels to run instead of the sweep, e.g. 1, 16, 50
    requests: int = Field(default=32, gt=0)  # per run
    duration_s: float = Field(default=300.0, gt=0)  # per run: no new request after it
    timeout_s: float = Field(default=300.0, gt=0)  # per request
    seed: int = 0
    slo_ttft_s: float = Field(default=2.0, gt=0)
    slo_tpot_s: float = Field(default=0.2, gt=0)
    usd_per_hour: float | None = Field(default=None, gt=0)  # None: by hardware
    hardware: str = "cpu"  # 'cpu' or a GPU name from the catalog
    plan_model: str | None = None  # the planner's model: GGUF (cpu) or catalog name (GPU)
    plan_scheme: str = "bf16"
    calibration: str | None = None  # a `tokenomy calibrate` profile for the estimate
    api_key: str | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _one_profile(self) -> BenchConfig:
        chosen = [name for name, on in (("--concurrency", self.concurrency is not None),
                                        ("--rate", self.rate is not None),
                                        ("--sweep", self.sweep),
                                        ("--levels", bool(self.levels))) if on]
        if len(chosen) > 1:
            raise ValueError(f"choose one load profile, not {' and '.join(chosen)}: "
                             "--concurrency N (closed loop), --rate R (Poisson arrivals) "
                             "--sweep (concurrency 1, 2, 4 ... --max-concurrency) or "
                             "--levels 1,16,50")
        if any(level <= 0 for level in self.levels):
            raise ValueError(f"--levels takes positive concurrencies, got {self.levels}")
        if self.engine != "llamacpp" and self.target not in ("", "embedded"):
            raise ValueError("--engine starts an engine for the embedded target; a URL "
                             "target is already served by its own")
        if self.target in ("", "embedded") and self.hardware != "cpu":
            raise ValueError(f"the embedded deployment runs on this machine's CPU; --hardware "
                             f"{self.hardware} describes what a URL target runs on")
        if self.synthetic and min(self.synthetic) <= 0:
            raise ValueError(f"--synthetic IN:OUT needs positive lengths, got {self.synthetic}")
        return self

    @classmethod
    def build(cls, **fields) -> BenchConfig:
        """Validate, turning pydantic's errors into one InvalidInputError."""
        from pydantic import ValidationError

        try:
            return cls(**fields)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'bench'}: "
                                 f"{err['msg'].removeprefix('Value error, ')}"
                                 for err in e.errors())
            raise InvalidInputError(problems) from None

    def concurrencies(self) -> list[int | None]:
        """The runs: concurrency levels, or [None] for one open-loop rate run. No profile
        given: the sweep."""
        if self.rate is not None:
            return [None]
        if self.concurrency is not None:
            return [self.concurrency]
        if self.levels:
            return sorted(set(self.levels))
        levels, c = [], 1
        while c < self.max_concurrency:
            levels.append(c)
            c *= 2
        return [*levels, self.max_concurrency]

    @property
    def profile(self) -> str:
        if self.rate is not None:
            return f"rate {self.rate:g} req/s (open loop, Poisson arrivals)"
        if self.concurrency is not None:
            return f"concurrency {self.concurrency} (closed loop)"
        levels = ", ".join(str(c) for c in self.concurrencies())
        return f"sweep: concurrency {levels} (closed loop)"

    @property
    def workload(self) -> str:
        if self.synthetic:
            return f"synthetic: {self.synthetic[0]} input / {self.synthetic[1]} output tokens"
        return (f"{self.dataset}: first user turn as prompt (<= {self.max_input_tokens} "
                f"tokens), first answer's length as max_tokens (<= {self.max_output_tokens})")


class LatencyStats(BaseModel):
    """Seconds; n is how many values (requests, or gaps for ITL)."""

    n: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


class RunEstimate(BaseModel):
    """The planner's estimate for one run's workload and load, on the same hardware."""

    batch: int  # sequences decoded together in the engine's model of it
    input_tokens: float  # per request (the run's measured mean)
    output_tokens: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float
    ttft_s: float | None = None  # one request alone
    tpot_s: float | None = None
    machine_s_per_1m_input: float
    machine_s_per_1m_output: float
    usd_per_1m_input: float
    usd_per_1m_output: float
    usd_per_1m_tokens: float


class BenchRun(BaseModel):
    """One load level, measured."""

    profile: Literal["concurrency", "rate"]
    concurrency: int | None = None  # closed loop: requests kept in flight
    rate: float | None = None  # open loop: requests/s offered
    requests_sent: int
    requests_ok: int  # generated by the engine (cached answers are not counted)
    requests_failed: int
    requests_cached: int = 0  # answered by a response cache: excluded from every figure
    errors: list[str] = []  # distinct upstream errors, first few
    duration_s: float
    input_tokens: int  # successful requests
    output_tokens: int
    token_counts: TokenCounts
    ttft_s: LatencyStats
    tpot_s: LatencyStats
    itl_s: LatencyStats
    e2e_s: LatencyStats
    request_throughput: float  # successful requests/s
    output_tokens_per_s: float
    total_tokens_per_s: float
    concurrency_observed: float  # time-average of requests in flight
    offered_rate: float | None = None  # requests issued/s (open loop)
    goodput_rps: float  # requests/s meeting both SLOs
    goodput_fraction: float  # of requests sent
    # speculative decoding, summed over successful requests as the engine reported them
    # (llama.cpp: each response's timings.draft_n / draft_n_accepted); None: not reported
    draft_tokens: int | None = None  # tokens drafted
    draft_tokens_accepted: int | None = None  # of which the model kept
    draft_acceptance: float | None = None  # accepted / drafted
    machine_s_per_1m_input: float | None = None
    machine_s_per_1m_output: float | None = None
    usd_per_1m_input: float | None = None
    usd_per_1m_output: float | None = None
    usd_per_1m_tokens: float | None = None  # blended: the run's machine time / all tokens
    estimate: RunEstimate | None = None
    ratio_output_tokens_per_s: float | None = None  # measured / estimated
    ratio_usd_per_1m_tokens: float | None = None

    @property
    def label(self) -> str:
        return (f"concurrency {self.concurrency}" if self.profile == "concurrency"
                else f"rate {self.rate:g}/s")


class BenchResult(BaseModel):
    """Everything `tokenomy bench` measured, with its conditions and the estimate."""

    schema_version: int = SCHEMA_VERSION
    target: str
    model: str
    engine: str  # what served it, as far as bench can tell
    serial_engine: bool  # serves one request at a time (llama-cpp-python)
    hardware: str
    usd_per_hour: float
    usd_per_hour_source: str
    workload: str
    profile: str
    slo: dict[str, float]
    config: BenchConfig
    runs: list[BenchRun]
    rho: float | None  # time per prompt token / time per output token
    rho_source: str
    prompt_overhead_tokens: int | None = None  # the chat template's tokens, counted mode
    estimate: dict | None = None  # the planner's inputs and figures for the hardware
    estimate_note: str = ""
    startup_s: float | None = None  # embedded: engine start until healthy, measured
    conditions: str
    date: str
