"""The gateway's configuration: a YAML file in the shape litellm users know.

    model_list:
      - model_name: smollm2                # the name clients send as `model`
        params:                            # `litellm_params` is accepted too
          engine: llamacpp                 # llamacpp | vllm | openai
          model: path/to/model.gguf        # omitted: the embedded SmolLM2 GGUF
          speculative: {method: ngram}     # or {method: draft, draft_model: small.gguf}
        model_info:                        # how each request is priced
          usd_per_hour: 0.1008             # self-hosted: the machine's price ...
          hardware: cpu                    # ... on this hardware (cpu or a catalog GPU)
          bench: results/bench/smollm2.json  # measured throughput (`tokenomy bench`)
      - model_name: gpt-4o-mini
        params: {engine: openai, model: gpt-4o-mini, api_base: https://api.openai.com/v1,
                 api_key: os.environ/OPENAI_API_KEY}
        model_info: {input_cost_per_token: 1.5e-7, output_cost_per_token: 6.0e-7}
    router: {calibration: router.json, target_quality: 0.9}
    cache: {exact: true, semantic: true, threshold: 0.95, ttl_s: 3600}
    database_url: sqlite:///usage.db       # or postgresql://...
    general: {require_api_key: true}       # keys: `tokenomy keys create`

Deployments sharing a `model_name` form a group: the first healthy one serves, the
others are fallbacks. `fallbacks` maps a group to further groups tried after it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tokenomy.errors import InvalidInputError, TokenomyError, problems
from tokenomy.home import home
from tokenomy.numbers import finite
from tokenomy.serve.cache import CacheSettings
from tokenomy.serve.router import RouterSettings

# On-demand price of a 2-vCPU, 8 GiB instance (AWS m7i.large, us-east-1); the embedded
# deployment is priced as if it ran on one.
DEFAULT_CPU_USD_PER_HOUR = 0.1008


class ConfigError(TokenomyError):
    """The gateway configuration is missing, malformed or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# what each engine offers for params.speculative (the others refuse it at config load)
SPECULATIVE_METHODS = {"llamacpp": ("ngram", "draft"), "vllm": ("ngram", "draft")}


class Speculative(_Strict):
    """Speculative decoding: something cheap drafts up to `num_tokens` tokens, the model
    checks them all in one batched step and keeps the longest prefix it agrees with, so
    answers are the model's own; it pays when checking k tokens costs less than k steps.

    - ngram: prompt lookup, no second model: the tokens that followed the last
      `ngram_size` tokens where they occurred before (llama.cpp's ngram-simple, vLLM's
      ngram). Pays on answers that copy from the prompt (edits, extraction, code).
    - draft: a smaller model with the same vocabulary (llamacpp: a .gguf; vllm: a
      checkpoint directory) drafts token by token.
    """

    method: Literal["ngram", "draft"]
    draft_model: str | None = None
    num_tokens: finite(ge=1, le=64, integer=True) = 8  # the most tokens drafted per step
    ngram_size: finite(ge=1, le=64, integer=True) = 3  # ngram: tokens matched
    # draft on llamacpp: a draft shorter than min_tokens is not checked, and drafting
    # stops at a token the draft model gives less than p_min
    min_tokens: finite(ge=0, le=64, integer=True) = 0
    p_min: finite(ge=0, le=1) | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.method == "draft" and not self.draft_model:
            raise ValueError("method 'draft' needs draft_model: a smaller model with the same "
                             "vocabulary (llamacpp: a .gguf, e.g. made by `tokenomy compress "
                             "--scheme gguf-q2_k`; vllm: a checkpoint directory)")
        if self.method == "ngram":
            wrong = [name for name in ("draft_model", "min_tokens", "p_min")
                     if name in self.model_fields_set]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for method 'draft' (method "
                                 "'ngram' drafts from the prompt and answer so far)")
        elif "ngram_size" in self.model_fields_set:
            raise ValueError("ngram_size: only for method 'ngram'")
        if self.min_tokens > self.num_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be <= num_tokens "
                             f"({self.num_tokens})")
        return self

    def llamacpp_args(self) -> list[str]:
        """tokenomy.serve.llamacpp_server's options (llama-server's own names)."""
        if self.method == "ngram":
            return ["--spec-type", "ngram-simple", "--spec-ngram-size-n", str(self.ngram_size),
                    "--draft-max", str(self.num_tokens)]
        args = ["--model-draft", str(gguf_file(Path(self.draft_model).expanduser())),
                "--draft-max", str(self.num_tokens), "--draft-min", str(self.min_tokens)]
        return args + (["--draft-p-min", str(self.p_min)] if self.p_min is not None else [])

    def vllm_config(self) -> dict:
        """vLLM's --speculative-config."""
        if self.method == "ngram":  # prompt_lookup_min defaults to the max: one n-gram size
            return {"method": "ngram", "num_speculative_tokens": self.num_tokens,
                    "prompt_lookup_max": self.ngram_size}
        return {"method": "draft_model", "model": str(Path(self.draft_model).expanduser()),
                "num_speculative_tokens": self.num_tokens}


class EngineParams(_Strict):
    engine: Literal["llamacpp", "openvino", "vllm", "openai"] = "llamacpp"
    model: str | None = None  # GGUF / checkpoint path, or the upstream's model id (openai)
    api_base: str | None = None  # openai: the upstream URL ending in /v1
    api_key: str | None = None  # a literal key or os.environ/NAME
    port: finite(ge=1024, le=65535, integer=True) | None = None  # engines: where to listen
    # llamacpp: context per slot (what one request can use: prompt + answer), and the
    # slots decoded together by continuous batching (they share one unified KV cache)
    n_ctx: finite(ge=128, le=10_000_000, integer=True) = 2048
    ctx_per_slot: finite(ge=128, le=10_000_000, integer=True) | None = None  # = n_ctx
    parallel: finite(ge=1, le=1024, integer=True) = 8
    python: str | None = None  # vllm: the interpreter of its own venv
    # passed through to the engine's command line (read `engine_args`: these, then what
    # `speculative` adds)
    extra_args: list[str] = Field(default=[], alias="engine_args")
    speculative: Speculative | None = None  # llamacpp and vllm
    timeout_s: finite(gt=0, le=86_400) = 120.0  # per upstream attempt
    max_retries: finite(ge=0, le=10, integer=True) = 2
    startup_timeout_s: finite(gt=0, le=86_400) = 300.0

    @model_validator(mode="after")
    def _upstream(self):
        if self.engine == "openai" and not (self.api_base and self.model):
            raise ValueError("engine 'openai' needs api_base (e.g. http://host:8000/v1) and "
                             "model (the upstream's model id)")
        if self.engine == "vllm" and not self.model:
            raise ValueError("engine 'vllm' needs model: a compressed-tensors or HF "
                             "checkpoint directory")
        if self.speculative is not None:
            offered = SPECULATIVE_METHODS.get(self.engine, ())
            if self.speculative.method not in offered:
                where = [e for e, methods in SPECULATIVE_METHODS.items()
                         if self.speculative.method in methods]
                raise ValueError(f"speculative method {self.speculative.method!r} is not "
                                 f"supported by engine {self.engine!r}; it is by: "
                                 f"{', '.join(where)}")
            llamacpp_only = [name for name in ("min_tokens", "p_min")
                             if name in self.speculative.model_fields_set]
            if self.engine == "vllm" and llamacpp_only:
                raise ValueError(f"speculative {', '.join(llamacpp_only)}: llama.cpp's "
                                 "draft settings; vLLM takes method, draft_model, num_tokens "
                                 "and ngram_size")
        return self

    @property
    def engine_args(self) -> list[str]:
        """The engine's extra command line: the config's own, then speculative decoding's."""
        spec = self.speculative
        if spec is None:
            return list(self.extra_args)
        if self.engine == "vllm":
            return [*self.extra_args, "--speculative-config",
                    json.dumps(spec.vllm_config(), separators=(",", ":"))]
        return [*self.extra_args, *spec.llamacpp_args()]

    @property
    def slot_context(self) -> int:
        return int(self.ctx_per_slot or self.n_ctx)

    def resolved_api_key(self) -> str | None:
        if self.api_key and self.api_key.startswith("os.environ/"):
            name = self.api_key.removeprefix("os.environ/")
            if name not in os.environ:
                raise ConfigError(f"api_key refers to ${name}, which is not set: export it "
                                  "or put the key in the config")
            return os.environ[name]
        return self.api_key


class ModelInfo(_Strict):
    """Pricing: list prices per token (APIs), or the machine's $/hour (self-hosted),
    amortized over measured (`bench`) or estimated (planner) throughput."""

    input_cost_per_token: finite(ge=0, le=1) | None = None  # USD
    output_cost_per_token: finite(ge=0, le=1) | None = None
    usd_per_hour: finite(gt=0, le=100_000) | None = None
    hardware: str = "cpu"  # 'cpu' or a GPU name from `tokenomy catalog gpus`
    gpus: finite(ge=1, le=100_000, integer=True) = 1
    bench: Path | None = None  # a `tokenomy bench --json` result for this deployment
    quality: Path | None = None  # a `tokenomy eval --json` result for this deployment
    plan_model: str | None = None  # catalog model for the planner's estimate on a GPU
    plan_scheme: str = "bf16"
    profile: str | None = None  # a `tokenomy calibrate` profile for the planner's estimate
    # the longest answer the deployment can give; reserved when a request sets no
    # max_tokens (default: the engine's context, or 16384 for an API)
    max_output_tokens: finite(ge=1, le=10_000_000, integer=True) | None = None

    @model_validator(mode="after")
    def _one_price(self):
        listed = self.input_cost_per_token is not None or self.output_cost_per_token is not None
        if listed and self.usd_per_hour is not None:
            raise ValueError("give either per-token list prices (input_cost_per_token, "
                             "output_cost_per_token) or usd_per_hour, not both")
        return self


class Deployment(_Strict):
    model_name: str = Field(min_length=1)
    params: EngineParams = Field(default_factory=EngineParams, alias="litellm_params")
    model_info: ModelInfo = Field(default_factory=ModelInfo)
    id: str = ""  # unique per deployment; defaults to model_name (+ #n when shared)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    @model_validator(mode="after")
    def _default_id(self):
        if not self.id:
            self.id = self.model_name
            self.model_fields_set.discard("id")  # the config may still number duplicates
        return self

    @property
    def self_hosted(self) -> bool:
        return self.params.engine != "openai"

    def priced(self) -> ModelInfo:
        """model_info with the default price filled in for a self-hosted deployment."""
        info = self.model_info
        if (self.self_hosted and info.usd_per_hour is None
                and info.input_cost_per_token is None and info.output_cost_per_token is None):
            if info.hardware == "cpu":
                return info.model_copy(update={"usd_per_hour": DEFAULT_CPU_USD_PER_HOUR})
            from tokenomy.catalog import default_catalog

            price = default_catalog().gpu(info.hardware).price.usd_per_hour * info.gpus
            return info.model_copy(update={"usd_per_hour": price})
        return info


class TelemetrySettings(_Strict):
    """OpenTelemetry spans per request (GenAI semantic conventions) over OTLP/HTTP."""

    otlp_endpoint: str  # e.g. http://127.0.0.1:4318 (the collector's OTLP/HTTP port)
    service_name: str = "tokenomy-gateway"
    headers: dict[str, str] = {}  # e.g. an auth header the collector wants
    include_end_user: bool = False  # end users stay off spans unless asked

    @field_validator("otlp_endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} must be an http(s) URL, e.g. http://127.0.0.1:4318 "
                             "(the collector's OTLP/HTTP port)")
        return v


class General(_Strict):
    host: str = "127.0.0.1"
    port: finite(ge=1, le=65535, integer=True) = 4000
    require_api_key: bool = False  # without it, keyless requests are metered as 'anonymous'
    # ids of API keys (`tokenomy keys create`) that may open /dashboard; none: it is closed
    admin_keys: list[str] = []
    fallbacks: dict[str, list[str]] = {}
    drain_timeout_s: finite(gt=0, le=86_400) = 30.0
    max_body_bytes: finite(ge=1, le=2**31, integer=True) = 4_000_000
    # a gateway renews its lease in the ledger every lease_s / 3; a replica on another
    # host whose lease expired is dead, and its in-flight reservations are released
    lease_s: finite(ge=3, le=3600) = 30.0


class GatewayConfig(_Strict):
    model_list: list[Deployment] = Field(min_length=1)
    router: RouterSettings = Field(default_factory=RouterSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    database_url: str | None = None
    general: General = Field(default_factory=General)
    telemetry: TelemetrySettings | None = None

    @model_validator(mode="after")
    def _ids(self):
        seen: dict[str, int] = {}
        for d in self.model_list:
            if d.model_name == "auto":
                raise ValueError("'auto' is reserved for the router: rename that model_name")
            if "id" not in d.model_fields_set:
                n = seen.get(d.model_name, 0)
                d.id = d.model_name if n == 0 else f"{d.model_name}#{n + 1}"
            seen[d.model_name] = seen.get(d.model_name, 0) + 1
        ids = [d.id for d in self.model_list]
        if len(ids) != len(set(ids)):
            raise ValueError(f"deployment ids must be unique, got {ids}")
        groups = set(seen)
        for group, targets in self.general.fallbacks.items():
            for name in [group, *targets]:
                if name not in groups:
                    raise ValueError(f"fallbacks name {name!r} is not a model_name in "
                                     f"model_list ({', '.join(sorted(groups))})")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{home() / 'usage.db'}"

    def check_files(self) -> None:
        """Every file the config names, read before any engine starts: GGUF models by
        their header, checkpoint directories, bench results (a corrupt or missing file
        fails in a second, not after minutes of loading)."""
        from tokenomy.serve.meter import load_bench_curve

        for d in self.model_list:
            where = f"model_list[{d.id}]"
            if d.params.engine == "llamacpp" and d.params.model:
                model = gguf_file(Path(d.params.model).expanduser())
                check_gguf(model, f"{where}.params.model")
            elif d.params.engine == "vllm" and not Path(d.params.model).expanduser().is_dir():
                raise ConfigError(f"{where}.params.model {d.params.model} is not a checkpoint "
                                  "directory (it does not exist)")
            if d.params.speculative and d.params.speculative.draft_model:
                check_draft(d.params, f"{where}.params.speculative.draft_model")
            if d.model_info.bench is not None:
                load_bench_curve(d.model_info.bench)
            if d.model_info.quality is not None and not d.model_info.quality.is_file():
                raise ConfigError(f"{where}.model_info.quality {d.model_info.quality} does "
                                  "not exist")

    def groups(self) -> dict[str, list[Deployment]]:
        out: dict[str, list[Deployment]] = {}
        for d in self.model_list:
            out.setdefault(d.model_name, []).append(d)
        return out


def default_config() -> GatewayConfig:
    """No config: the embedded SmolLM2 GGUF on llama.cpp, priced as a 2-vCPU instance."""
    return GatewayConfig(model_list=[Deployment(model_name="smollm2")])


def load_config(path: str | Path | None) -> GatewayConfig:
    if path is None:
        return default_config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"gateway config {path} does not exist: start from "
                          "examples/gateway.yaml in the tokenomy repository, or run without "
                          "--config for the embedded default")
    raw = read_yaml(path, "gateway config")
    if not isinstance(raw, dict):
        raise ConfigError(f"gateway config {path} must be a YAML mapping with a model_list "
                          f"(got {type(raw).__name__})")
    base = path.parent
    for entry in raw.get("model_list") or []:
        _relative_paths(entry, base)
    if isinstance(raw.get("router"), dict) and isinstance(raw["router"].get("calibration"),
                                                          str | Path):
        raw["router"]["calibration"] = str(base / raw["router"]["calibration"])
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {problems(exc, limit=5)}") from None


def read_yaml(path: Path, what: str):
    """A YAML file's data; a missing, unreadable or malformed file is one ConfigError that
    names the file and the place, never its content (it may hold keys)."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: "
                          f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed"
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from None


def check_gguf(path: Path, field: str) -> None:
    """`path` is a readable GGUF file: its header, metadata and tensor table parse, and
    the tensors lie inside the file (memory-mapped: no weights are read)."""
    if not path.is_file():
        raise ConfigError(f"{field} {path} does not exist: give a .gguf file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ConfigError(f"{field} {path} cannot be read: {exc.strerror}") from None
    if magic != b"GGUF":
        raise ConfigError(f"{field} {path} is not a GGUF file (no GGUF header): give a .gguf "
                          "model, e.g. one made by `tokenomy compress --scheme gguf-q4_k_m`")
    from tokenomy._gguf_meta import check_tensor_data, read_gguf_header

    try:
        check_tensor_data(path, read_gguf_header(path, decode=lambda _key: False))
    except Exception as exc:  # a corrupt file fails in many ways: all are this one error
        raise ConfigError(f"{field} {path} is a corrupt or truncated GGUF file "
                          f"({exc.__class__.__name__}): re-download or re-export it") from None


def gguf_file(path: Path) -> Path:
    """A .gguf path as given, or the first .gguf in a directory (a `tokenomy compress`
    output)."""
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        return found[0] if found else path
    return path


def check_draft(params: EngineParams, field: str) -> None:
    """The draft model exists, and shares the served model's vocabulary (llama.cpp: its
    own test on the GGUF metadata; vLLM: config.json's vocab_size); an incompatible draft
    would be re-tokenized every step, or refused after minutes of loading."""
    draft = Path(params.speculative.draft_model).expanduser()
    if params.engine == "vllm":
        if not draft.is_dir():
            raise ConfigError(f"{field} {draft} is not a checkpoint directory (vLLM's draft "
                              "model is a Hugging Face-style directory)")
        sizes = [_vocab_size(Path(m).expanduser()) for m in (params.model, draft)]
        if None not in sizes and sizes[0] != sizes[1]:
            raise ConfigError(f"{field} {draft} has a vocabulary of {sizes[1]} tokens, the "
                              f"model {sizes[0]}: a draft model must share the model's "
                              "tokenizer")
        return
    draft = gguf_file(draft)
    check_gguf(draft, field)
    from tokenomy.sources import embedded_model_path

    target = gguf_file(Path(params.model).expanduser()) if params.model \
        else embedded_model_path()
    if target is None or not target.is_file():
        return  # the engine's own start-up names the missing model
    from tokenomy.serve.llamacpp_server import vocab_mismatch

    problem = vocab_mismatch(target, draft)
    if problem:
        raise ConfigError(f"{field} {draft} does not share the vocabulary of {target.name} "
                          f"({problem}): llama.cpp would re-tokenize every draft; use a "
                          "draft of the same model family")


def _vocab_size(checkpoint: Path) -> int | None:
    try:
        return int(json.loads((checkpoint / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _relative_paths(entry: dict, base: Path) -> None:
    """Paths in a config file are relative to the file, as users expect."""
    if not isinstance(entry, dict):
        return
    params = entry.get("params") or entry.get("litellm_params") or {}
    engine = params.get("engine", "llamacpp") if isinstance(params, dict) else None
    if isinstance(params, dict) and engine != "openai" and params.get("model"):
        candidate = base / params["model"]
        if candidate.exists():
            params["model"] = str(candidate)
    spec = params.get("speculative") if isinstance(params, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("draft_model"), str):
        candidate = base / spec["draft_model"]
        if candidate.exists():
            spec["draft_model"] = str(candidate)
    info = entry.get("model_info")
    if isinstance(info, dict):
        for key in ("bench", "quality"):
            if info.get(key):
                info[key] = str(base / info[key])


__all__ = [
    "ConfigError",
    "Deployment",
    "GatewayConfig",
    "InvalidInputError",
    "Speculative",
    "check_gguf",
    "default_config",
    "load_config",
]
