"""Two serving levers on top of the precision scheme, in the same roofline: speculative
decoding and prefix caching. Every figure stays an ESTIMATE.

Speculative decoding (Leviathan et al. 2023): a proposer guesses k tokens, the target
verifies them in one pass and keeps the accepted run plus one token of its own. With a
per-token acceptance rate a the expected tokens per target step are

    E = (1 - a^(k+1)) / (1 - a)                       (a = 0.8, k = 4: E = 3.3616)

One engine step is the target's pass over k + 1 tokens per sequence (weights streamed
once, each sequence's KV read once; the k extra tokens add compute) plus, for a draft
model, its k decode passes; an n-gram proposer's lookup is taken as free. TPOT = step / E.
At small batch the step is memory-bound, so k + 1 tokens cost about one: TPOT falls ~E
times. At large batch it is compute-bound: the k + 1 - E rejected tokens per sequence
are wasted FLOPs and speculation stops paying, or loses. The draft's weights and KV
take GPU memory from the target's KV room. Layouts are TP-only (vLLM's docs list
speculative decoding as incompatible with pipeline parallelism).

Prefix caching with hit rate H: that share of each prompt's tokens finds its KV cached,
so prefill computes (1 - H) x input tokens (attending to the cached prefix): TTFT and
the GPU time per 1M input tokens drop. KV memory is left as without the cache (shared
blocks may hold more sequences: not counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from tokenomy.catalog import Catalog, Scheme, Workload
from tokenomy.errors import InvalidInputError, NotFoundError
from tokenomy.modelspec import ModelSpec
from tokenomy.numbers import Range
from tokenomy.plan.cost import (
    BATCH_SIZES,
    Cost,
    OperatingPoint,
    operating_point,
    select_batch,
)
from tokenomy.plan.memory import (
    MemoryFit,
    WeightBytes,
    kv_bytes_per_sequence,
    layouts,
    memory_fit,
    tp_problem,
    weight_bytes,
)
from tokenomy.plan.perf import Hardware, StepTime, step_time

# k = 4: for a in 0.6-0.8 and a draft costing 5-10% of a target step, Leviathan et al.'s
# speed-up E / (k c + 1) peaks at k = 3-5; for n-gram (c ~ 0) E already reaches 83% of
# its limit 1 / (1 - a) at a = 0.7, while each further token is verified at full cost.
DEFAULT_SPEC_TOKENS = 4
ACCEPTANCE = Range(gt=0, lt=1)
PREFIX_CACHE_HIT = Range(ge=0, lt=1)
SPEC_TOKENS = Range(ge=1, le=16, integer=True)
SPEC_DECODE = "--spec-decode ngram|draft:MODEL"


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one target step yields per sequence: (1 - a^(k+1)) / (1 - a)."""
    return (1 - acceptance ** (k + 1)) / (1 - acceptance)


class Levers(BaseModel):
    """The levers a plan applied (its inputs); round-trips to JSON."""

    model_config = ConfigDict(frozen=True)

    spec_decode: str | None = None  # "ngram" | "draft:MODEL", as given
    draft_model: str | None = None  # the draft's resolved name
    acceptance: float | None = None
    spec_tokens: int | None = None  # k
    prefix_cache_hit: float = 0.0
    tokens_per_step: float = 1.0  # E

    def label(self) -> str:
        """'spec decode ngram (acceptance 0.7, k=4, E=2.77) + prefix cache hit 50%'"""
        parts = []
        if self.spec_decode:
            parts.append(f"spec decode {self.spec_decode} (acceptance {self.acceptance:g}, "
                         f"k={self.spec_tokens}, E={self.tokens_per_step:.2f})")
        if self.prefix_cache_hit:
            parts.append(f"prefix cache hit {self.prefix_cache_hit:.0%}")
        return " + ".join(parts)


class LeverEffect(BaseModel):
    """One row without and with the levers (estimated). The row's own point, cost and
    ranges are WITH them; `without_*` is the plain plan of the same scheme and GPU."""

    model_config = ConfigDict(frozen=True)

    without_point: OperatingPoint | None
    without_cost: Cost | None
    without_gpus: int | None  # per replica
    without_batch_limit: str
    notes: list[str]
    # The mechanism at the levered row's layout and batch (the How panel's numbers);
    # None where the levers leave no layout that holds the model.
    step_ms: float | None = None  # one engine step: target verify pass + draft passes
    draft_ms: float | None = None  # the draft's k passes inside it (0 for n-gram)
    same_batch_tpot_ms: float | None = None  # TPOT at that layout and batch without levers
    batch1_tpot_ms: float | None = None  # one sequence alone, with the levers
    batch1_plain_tpot_ms: float | None = None  # ... and without
    spec_pays_up_to_batch: int | None = None  # largest batch where speculation still
    # lowers TPOT at that layout, prefix cache alike (0: at none; None: no speculation)
    prefill_ms: float | None = None  # TTFT's prefill with the prefix cache (and draft's)
    same_layout_prefill_ms: float | None = None  # without
    draft_gb_per_gpu: float | None = None  # draft weights on each GPU (0 without a draft)
    notes: list[str]


def resolve_levers(target: ModelSpec, catalog: Catalog, *, spec_decode: str | None,
                   acceptance: float | None, spec_tokens: int | None,
                   prefix_cache_hit: float | None) -> Lever | None:
    """The levers, checked; None when none is asked for (the plan is then unchanged)."""
    hit = PREFIX_CACHE_HIT.check(prefix_cache_hit or 0.0, "prefix cache hit rate")
    if spec_decode is None:
        for name, value in (("acceptance", acceptance), ("spec tokens", spec_tokens)):
            if value is not None:
                raise InvalidInputError(f"{name} applies only with speculative decoding: "
                                        f"add {SPEC_DECODE}.")
        return Lever(Levers(prefix_cache_hit=hit)) if hit else None
    method, _, name = str(spec_decode).strip().partition(":")
    if method not in ("ngram", "draft") or (method == "draft") != bool(name.strip()):
        raise InvalidInputError(f"spec decode must be 'ngram' or 'draft:MODEL' (a catalog "
                                f"model or HF model directory), got {spec_decode!r}.")
    if acceptance is None:
        raise InvalidInputError(f"{SPEC_DECODE} needs --acceptance A: the share of proposed "
                                "tokens the target accepts, > 0 and < 1 (e.g. 0.7).")
    alpha = ACCEPTANCE.check(acceptance, "acceptance")
    k = SPEC_TOKENS.check(DEFAULT_SPEC_TOKENS if spec_tokens is None else spec_tokens,
                          "spec tokens (k)")
    draft = _draft(name.strip(), target, catalog) if method == "draft" else None
    return Lever(Levers(
        spec_decode=f"draft:{name.strip()}" if draft else "ngram",
        draft_model=draft.name if draft else None, acceptance=alpha, spec_tokens=int(k),
        prefix_cache_hit=hit, tokens_per_step=expected_tokens(alpha, int(k))), draft)


def _draft(name: str, target: ModelSpec, catalog: Catalog) -> ModelSpec:
    from tokenomy.plan.workload import resolve_model

    try:
        draft = resolve_model(name, catalog)
    except NotFoundError as e:
        raise InvalidInputError(f"draft model for --spec-decode draft:{name}: {e}") from None
    if draft.active_params >= target.active_params:
        raise InvalidInputError(
            f"draft model {draft.name} ({draft.active_params / 1e9:,.2f}B active params) is "
            f"not smaller than {target.name} ({target.active_params / 1e9:,.2f}B): a draft "
            "saves time only if much smaller; pick a small model with the same tokenizer, "
            "or --spec-decode ngram.")
    return draft


@dataclass(frozen=True)
class Lever:
    """The levers with what they need to price a step: the draft's architecture."""

    settings: Levers
    draft: ModelSpec | None = None

    @property
    def speculates(self) -> bool:
        return self.settings.spec_decode is not None

    @property
    def k(self) -> int:
        return self.settings.spec_tokens or 0

    @property
    def no_fit(self) -> str:
        if self.draft is not None:
            return "does not fit beside the draft model"
        return ("does not fit without pipeline parallelism, which vLLM's speculative "
                "decoding does not run with") if self.speculates else "does not fit"

    def allows(self, tp: int, pp: int) -> bool:
        return pp == 1 or not self.speculates

    # -- memory -------------------------------------------------------------------
    def draft_hw(self, scheme: Scheme, hw: Hardware) -> Hardware:
        """The draft shards like the target where its heads allow, else one GPU each."""
        tp = hw.tp if tp_problem(self.draft, scheme, hw.tp) is None else 1
        return Hardware(hw.gpu, hw.engine, tp, 1)

    def draft_bytes_per_gpu(self, scheme: Scheme, hw: Hardware) -> float:
        if self.draft is None:
            return 0.0
        return weight_bytes(self.draft, scheme).total / self.draft_hw(scheme, hw).tp

    def memory(self, fit: MemoryFit, scheme: Scheme, hw: Hardware, kv_bits: int) -> MemoryFit:
        """The target's fit less the draft's weights, and each sequence's draft KV."""
        if self.draft is None:
            return fit
        weights = self.draft_bytes_per_gpu(scheme, hw)
        kv = kv_bytes_per_sequence(self.draft, fit.context, kv_bits,
                                   self.draft_hw(scheme, hw).tp, 1)
        return fit.model_copy(update={"weights": fit.weights + weights,
                                      "kv_room": fit.kv_room - weights,
                                      "kv_per_sequence": fit.kv_per_sequence + kv})

    def deployment(self, spec: ModelSpec, scheme: Scheme, hw: Hardware, context: int,
                   kv_bits: int, smallest: MemoryFit | None) -> MemoryFit | None:
        """The fewest GPUs holding the target, the draft and one full-context sequence."""
        if smallest is None or (self.draft is None and self.allows(smallest.tp, smallest.pp)):
            return smallest
        for tp, pp in layouts(spec, scheme, hw.gpu):
            if tp * pp < smallest.num_gpus or not self.allows(tp, pp):
                continue
            fit = memory_fit(spec, scheme, hw.gpu, hw.engine, tp, pp, context, kv_bits)
            fit = self.memory(fit, scheme, Hardware(hw.gpu, hw.engine, tp, pp), kv_bits)
            if fit.fits:
                return fit
        return None

    # -- time ---------------------------------------------------------------------
    def step(self, spec: ModelSpec, scheme: Scheme, weights: WeightBytes, hw: Hardware,
             seqs: int, context: int, prompt: int, prompt_context: int,
             kv_bits: int) -> tuple[StepTime, float]:
        """(the target's pass, the draft's k passes in s) of one engine step: `seqs`
        sequences at `context` plus `prompt` uncached prompt tokens (chunked prefill)."""
        base = step_time(spec, scheme, weights, hw, decode_seqs=seqs, context=context,
                         prefill_tokens=prompt, prefill_context=prompt_context,
                         kv_bits=kv_bits)
        if not self.speculates:
            return base, 0.0
        extra = seqs * self.k  # the proposed tokens, verified beside the last real one
        verify = step_time(spec, scheme, weights, hw, decode_seqs=0, context=0,
                           prefill_tokens=extra, prefill_context=context, kv_bits=kv_bits)
        whole = step_time(spec, scheme, weights, hw, decode_seqs=seqs, context=context,
                          prefill_tokens=prompt + extra, prefill_context=prompt_context,
                          kv_bits=kv_bits)
        target = StepTime(memory_s=whole.memory_s, compute_s=base.compute_s + verify.compute_s,
                          comm_s=whole.comm_s, overhead_s=whole.overhead_s,
                          attn_memory_s=whole.attn_memory_s,
                          attn_compute_s=base.attn_compute_s + verify.attn_compute_s)
        return target, self._draft_s(scheme, hw, seqs, context, prompt, prompt_context, kv_bits)

    def _draft_s(self, scheme, hw, seqs, context, prompt, prompt_context, kv_bits) -> float:
        """k draft passes inside the engine step (no scheduling or per-sequence overhead of
        their own, but each launches its layers' kernels); the first also prefills the
        step's prompt tokens."""
        if self.draft is None:
            return 0.0
        dhw, dw = self.draft_hw(scheme, hw), weight_bytes(self.draft, scheme)
        first = step_time(self.draft, scheme, dw, dhw, decode_seqs=seqs, context=context,
                          prefill_tokens=prompt, prefill_context=prompt_context,
                          kv_bits=kv_bits)
        rest = step_time(self.draft, scheme, dw, dhw, decode_seqs=seqs, context=context,
                         kv_bits=kv_bits)
        # each pass launches the draft's kernels: its per-layer cost is paid every pass
        layers = self.draft.num_layers * dhw.engine.efficiency.layer_overhead_us / 1e6
        return _pass_s(first) + (self.k - 1) * _pass_s(rest) + self.k * layers

    def prefill_s(self, spec: ModelSpec, scheme: Scheme, weights: WeightBytes, hw: Hardware,
                  input_tokens: int, kv_bits: int) -> float:
        """TTFT's prefill: the uncached (1 - H) share of the prompt, after the cached
        prefix, in chunks of the engine's token budget; plus the draft's own prefill."""
        cached = int(input_tokens * self.settings.prefix_cache_hit)
        total = _prefill(spec, scheme, weights, hw, input_tokens - cached, cached, kv_bits)
        if self.draft is not None:
            total += _prefill(self.draft, scheme, weight_bytes(self.draft, scheme),
                              self.draft_hw(scheme, hw), input_tokens - cached, cached,
                              kv_bits, overhead=False)
        return total

    def point(self, spec: ModelSpec, scheme: Scheme, weights: WeightBytes, hw: Hardware,
              wl: Workload, batch: int, kv_bits: int, prefill_s: float) -> OperatingPoint:
        """perf's operating point with the levers: each step yields E tokens a sequence,
        so it admits E times the prompt tokens, of which (1 - H) are computed."""
        seqs = math.ceil(batch / hw.pp)
        context = wl.input_tokens + wl.output_tokens // 2
        e, hit = self.settings.tokens_per_step, self.settings.prefix_cache_hit
        prompt = math.ceil(seqs * wl.input_tokens * e * (1 - hit) / wl.output_tokens)
        prompt_context = int(wl.input_tokens * (1 + hit)) // 2
        args = (spec, scheme, weights, hw, seqs, context)
        target, draft_s = self.step(*args, prompt, prompt_context, kv_bits)
        decode, decode_draft_s = self.step(*args, 0, 0, kv_bits)
        step = target.total_s + draft_s
        prompt_only = step_time(spec, scheme, weights, hw, decode_seqs=0, context=0,
                                prefill_tokens=prompt, prefill_context=prompt_context,
                                kv_bits=kv_bits).all_compute_s
        input_time = min(step, max(step - decode.total_s - decode_draft_s, prompt_only))
        tpot = step / e
        out_tps = batch / tpot
        return OperatingPoint(
            batch=batch, ttft_s=prefill_s + step, tpot_ms=tpot * 1e3,
            output_tokens_per_s=out_tps,
            input_tokens_per_s=out_tps * wl.input_tokens / wl.output_tokens,
            bound=target.bound, input_time_share=input_time / step)

    def choose_batch(self, spec: ModelSpec, scheme: Scheme, weights: WeightBytes,
                     hw: Hardware, wl: Workload, max_batch: int,
                     kv_bits: int) -> tuple[OperatingPoint | None, str]:
        """cost.choose_batch's rule on the levered points: online, the largest batch
        meeting the targets; offline, the throughput peak."""
        prefill = self.prefill_s(spec, scheme, weights, hw, wl.input_tokens, kv_bits)
        sizes = sorted({b for b in BATCH_SIZES if b < max_batch} | {max_batch})
        points = [self.point(spec, scheme, weights, hw, wl, b, kv_bits, prefill)
                  for b in sizes]
        return select_batch(points, wl, max_batch, hw)

    # -- what the row reports -----------------------------------------------------
    def effect(self, spec: ModelSpec, scheme: Scheme, weights: WeightBytes, wl: Workload,
               kv_bits: int, hw: Hardware, fit: MemoryFit | None,
               point: OperatingPoint | None, without: tuple | None,
               without_limit: str) -> LeverEffect:
        """The row's comparison: `without` is the plain plan's (fit, point, cost, why);
        the mechanism is priced at the levered row's layout `fit` and batch."""
        mechanism = {}
        if fit is not None:
            hw = Hardware(hw.gpu, hw.engine, fit.tp, fit.pp)
            max_batch = max(1, min(fit.max_sequences, hw.engine.max_num_seqs))
            mechanism = self._mechanism(spec, scheme, weights, wl, kv_bits, hw, max_batch,
                                        point.batch if point else 1)
        return LeverEffect(
            without_point=without[1] if without else None,
            without_cost=without[2] if without else None,
            without_gpus=without[0].num_gpus if without else None,
            without_batch_limit=without[3] if without else without_limit,
            notes=self._notes(spec, scheme, hw), **mechanism)

    def _mechanism(self, spec: ModelSpec, scheme: Scheme, weights: WeightBytes,
                   wl: Workload, kv_bits: int, hw: Hardware, max_batch: int,
                   batch: int) -> dict:
        seqs = math.ceil(batch / hw.pp)
        context = wl.input_tokens + wl.output_tokens // 2
        e, hit = self.settings.tokens_per_step, self.settings.prefix_cache_hit
        prompt = math.ceil(seqs * wl.input_tokens * e * (1 - hit) / wl.output_tokens)
        target, draft_s = self.step(spec, scheme, weights, hw, seqs, context, prompt,
                                    int(wl.input_tokens * (1 + hit)) // 2, kv_bits)
        prefill = self.prefill_s(spec, scheme, weights, hw, wl.input_tokens, kv_bits)
        plain_prefill = _prefill(spec, scheme, weights, hw, wl.input_tokens, 0, kv_bits)
        # speculation is judged against the same prefix cache without it
        cache_only = Lever(Levers(prefix_cache_hit=hit))
        tpots = {}  # batch -> TPOT in ms (with the levers, with none, with the cache only)
        for b in sorted({b for b in BATCH_SIZES if b <= max_batch} | {1, batch}):
            tpots[b] = (self.point(spec, scheme, weights, hw, wl, b, kv_bits, prefill).tpot_ms,
                        operating_point(spec, scheme, weights, hw, wl, b, kv_bits,
                                        plain_prefill).tpot_ms,
                        cache_only.point(spec, scheme, weights, hw, wl, b, kv_bits, 0).tpot_ms)
        pays = 0
        for b, (with_, _, cached) in tpots.items():
            if with_ >= cached:
                break
            pays = b
        return dict(
            step_ms=(target.total_s + draft_s) * 1e3, draft_ms=draft_s * 1e3,
            same_batch_tpot_ms=tpots[batch][1], batch1_tpot_ms=tpots[1][0],
            batch1_plain_tpot_ms=tpots[1][1],
            spec_pays_up_to_batch=pays if self.speculates else None,
            prefill_ms=prefill * 1e3, same_layout_prefill_ms=plain_prefill * 1e3,
            draft_gb_per_gpu=self.draft_bytes_per_gpu(scheme, hw) / 1e9)

    def _notes(self, spec: ModelSpec, scheme: Scheme, hw: Hardware) -> list[str]:
        notes = []
        if self.draft is not None:
            dhw = self.draft_hw(scheme, hw)
            gb = self.draft_bytes_per_gpu(scheme, hw) / 1e9
            notes.append(f"draft {self.draft.name}: {gb:.2f} GB of weights per GPU "
                         f"(TP={dhw.tp}) and its KV per sequence")
            if self.draft.vocab_size != spec.vocab_size:
                notes.append(f"draft vocabulary {self.draft.vocab_size:,} != target "
                             f"{spec.vocab_size:,}: vLLM needs a shared tokenizer")
        return notes


def _pass_s(s: StepTime) -> float:
    return max(s.memory_s, s.compute_s) + max(s.attn_memory_s, s.attn_compute_s) + s.comm_s


def _prefill(spec: ModelSpec, scheme: Scheme, weights: WeightBytes, hw: Hardware,
             tokens: int, start: int, kv_bits: int, overhead: bool = True) -> float:
    """perf.prefill_time_s for `tokens` prompt tokens after `start` cached ones."""
    budget = hw.engine.max_num_batched_tokens
    total, done = 0.0, 0
    while done < tokens:
        chunk = min(budget, tokens - done)
        s = step_time(spec, scheme, weights, hw, decode_seqs=0, context=0,
                      prefill_tokens=chunk, prefill_context=start + done + chunk // 2,
                      kv_bits=kv_bits)
        total += s.total_s if overhead else _pass_s(s)
        done += chunk
    return total


__all__ = ["DEFAULT_SPEC_TOKENS", "Lever", "LeverEffect", "Levers", "expected_tokens",
           "resolve_levers"]
