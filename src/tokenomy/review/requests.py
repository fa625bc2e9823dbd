"""Findings from the requests themselves: identical requests that missed the cache,
shared prompt prefixes, long histories, answers cut at max_tokens, and spend on failed
requests."""

from __future__ import annotations

from collections import defaultdict

from tokenomy.review.context import CHARS_PER_TOKEN, Context
from tokenomy.review.finding import Finding, Skipped, examples

LONG_HISTORY_MESSAGES = 8  # keep the system message and the last this many messages
FAILED = ("error", "interrupted", "cancelled")


def _cost(r: dict) -> float:
    return float(r["cost_usd"] or 0.0)


def _needs(ctx: Context, fid: str, *columns: str, marker: str | None = None
           ) -> Skipped | None:
    """Skipped when the ledger lacks a column, or no request in the window carries the
    `marker` column (default: the first): rows written by a gateway older than it."""
    missing = ctx.data.missing(*columns)
    if missing:
        return Skipped(fid, f"this ledger has no {', '.join(missing)} column (written by a "
                            "gateway older than the fingerprints): not checked")
    marker = marker or columns[0]
    if ctx.data.rows and all(r[marker] is None for r in ctx.data.rows):
        return Skipped(fid, f"no request in the window carries {marker} (recorded by "
                            "gateways older than the fingerprints): not checked")
    return None


def cache_repeats(ctx: Context) -> Finding | Skipped | None:
    """Requests identical to an earlier answered one (same prompt_hash: model, messages
    and every answer-changing parameter, temperature included) that the exact cache
    could have served: the earlier answer had finished and was under cache.ttl_s old."""
    fid = "cache-repeats"
    if skip := _needs(ctx, fid, "prompt_hash"):
        return skip
    ttl = ctx.config.cache.ttl_s
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in ctx.data.rows:
        if r["prompt_hash"] and r["endpoint"] != "embeddings":
            groups[r["prompt_hash"]].append(r)
    missed, keys_crossed, hits = [], 0, 0
    for rows in groups.values():
        entry = None  # the answer a cache would hold: (finished_at, key)
        for r in rows:
            if r["cache"]:
                hits += 1
                continue
            if r["status"] != "ok":
                continue
            if entry is not None and entry[0] <= r["started_at"] <= entry[0] + ttl:
                missed.append(r)
                keys_crossed += entry[1] != r["key_id"]
                continue
            entry = (r["finished_at"] or r["started_at"], r["key_id"])
    if not missed:
        return None
    usd = sum(_cost(r) for r in missed)
    repeated = len({r["prompt_hash"] for r in missed})
    cache = ctx.config.cache
    change = f"cache:\n  exact: true\n  ttl_s: {ttl:g}"
    caveats = ["the exact cache answers only requests sent with temperature 0 (and n 1): "
               "repeats sampled at another temperature are served from the cache only if "
               "the client sends temperature 0"]
    if keys_crossed:
        change += (f"\n  shared_across_keys: true   # {keys_crossed} repeats came from "
                   "another key")
        caveats.append("entries belong to one API key unless shared_across_keys")
    if cache.exact:
        caveats.append("the exact cache is already on in this config: these repeats missed "
                       "it (another temperature, cache-control: no-cache, another gateway "
                       "without shared redis_url, or the config changed since)")
    return Finding(
        fid, "Identical requests answered again instead of from the cache", usd,
        usd * ctx.scale, "measured",
        "the metered cost of every repeat after the first answer, where the repeat came "
        f"after that answer finished and within cache.ttl_s ({ttl:g} s)",
        {"repeats": len(missed), "distinct_requests": repeated, "cache_hits": hits,
         "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in missed),
         "completion_tokens": sum(r["completion_tokens"] or 0 for r in missed),
         "usd": usd}, examples(missed), change, caveats=caveats)


def prefix_cache(ctx: Context) -> Finding | Skipped | None:
    """Requests whose prompt starts like an earlier one's on the same deployment (same
    prefix_hash) and that reported no cached tokens: prefix caching reuses that prefix's
    KV cache instead of computing it again. Identical requests are left to the exact
    cache's finding (never counted twice)."""
    fid = "prefix-cache"
    if skip := _needs(ctx, fid, "prefix_hash", "prefix_chars", marker="prompt_hash"):
        return skip
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in ctx.data.rows:
        if r["prefix_hash"] and r["deployment"] and not r["cache"] and r["status"] == "ok":
            groups[(r["deployment"], r["prefix_hash"])].append(r)
    usd, repeats, tokens, rows, deps, unpriced = 0.0, 0, 0.0, [], set(), set()
    for (dep, _), group in groups.items():
        seen = {group[0]["prompt_hash"]}  # identical repeats are the exact cache's finding
        later = []
        for r in group[1:]:
            if r["prompt_hash"] not in seen and not r["cached_tokens"]:
                later.append(r)
            seen.add(r["prompt_hash"])
        if not later:
            continue
        rate = ctx.rate(dep)
        if rate is None:
            unpriced.add(dep)
            continue
        for r in later:
            t = min(int(r["prefix_chars"] or 0) / CHARS_PER_TOKEN, r["prompt_tokens"] or 0)
            tokens += t
            usd += t * rate.usd_per_input_token
        repeats += len(later)
        rows += later
        deps.add(dep)
    if not rows:
        return None
    caveats = [] if not unpriced else [f"not priced (not in this config): {sorted(unpriced)}"]
    return Finding(
        fid, "Shared prompt prefixes computed again (prefix caching)", usd, usd * ctx.scale,
        "estimated",
        f"prefix tokens estimated as prefix characters / {CHARS_PER_TOKEN:g} (capped at the "
        "request's prompt tokens) x the deployment's input price x each later request "
        "with that prefix (not an identical repeat) that reported no cached tokens",
        {"repeats": repeats, "distinct_prefixes": len({r["prefix_hash"] for r in rows}),
         "prefix_tokens_estimated": round(tokens), "deployments": sorted(deps), "usd": usd},
        examples(rows), _prefix_change(ctx, sorted(deps)), caveats=caveats)


def _prefix_change(ctx: Context, deps: list[str]) -> str:
    lines = []
    for dep in deps:
        d = ctx.deployment(dep)
        if d.params.engine == "vllm":
            lines += [f"# {dep}: vLLM's automatic prefix caching",
                      "model_list:", f"  - model_name: {d.model_name}", "    params:",
                      "      engine_args: [--enable-prefix-caching]"]
        elif d.params.engine == "llamacpp":
            lines += [f"# {dep}: llama.cpp reuses a slot's KV cache for a matching prefix "
                      "when requests keep cache_prompt: true (llama-server's default);",
                      "# keep the shared text (system prompt, documents) first and "
                      "byte-identical, and fewer params.parallel slots keep more prefixes "
                      "warm"]
        else:
            lines += [f"# {dep}: an API: keep the shared prefix first and byte-identical "
                      "so the provider's prompt caching applies (OpenAI: automatic from "
                      "1024 tokens; Anthropic: cache_control on the prefix)"]
    return "\n".join(lines)


def long_histories(ctx: Context) -> Finding | Skipped | None:
    """Requests carrying more than LONG_HISTORY_MESSAGES earlier messages: trimming to
    the system message and the last ones cuts their prompt tokens."""
    fid = "long-history"
    if skip := _needs(ctx, fid, "message_count"):
        return skip
    keep = LONG_HISTORY_MESSAGES
    rows = [r for r in ctx.data.rows if (r["message_count"] or 0) > keep + 1
            and r["status"] == "ok" and not r["cache"]]
    usd, cut, priced = 0.0, 0.0, []
    for r in rows:
        rate = ctx.rate(r["deployment"])
        if rate is None:
            continue
        share = 1 - (keep + 1) / r["message_count"]
        cut += (r["prompt_tokens"] or 0) * share
        usd += (r["prompt_tokens"] or 0) * share * rate.usd_per_input_token
        priced.append(r)
    if not priced:
        return None
    return Finding(
        fid, f"Long conversation histories (more than {keep + 1} messages)", usd,
        usd * ctx.scale, "estimated",
        f"prompt tokens x the share of messages beyond the system message and the last "
        f"{keep} (tokens assumed spread evenly over the messages) x the input price",
        {"requests": len(priced), "mean_messages": round(
            sum(r["message_count"] for r in priced) / len(priced), 1),
         "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in priced),
         "prompt_tokens_cut_estimated": round(cut), "usd": usd},
        examples(priced),
        "# a client change (the gateway does not rewrite conversations): send the system "
        f"message and the last {keep} messages,\n# or a running summary of the older ones",
        caveats=["trimming can change answers that depend on early turns: check with "
                 "`tokenomy eval` on your traffic"])


def cut_answers(ctx: Context) -> Finding | Skipped | None:
    """Answers that stopped at max_tokens (finish_reason length): paid for, and often
    discarded or asked again."""
    fid = "max-tokens"
    if skip := _needs(ctx, fid, "finish_reason"):
        return skip
    rows = [r for r in ctx.data.rows if r["finish_reason"] == "length" and not r["cache"]]
    if not rows:
        return None
    usd = sum(_cost(r) for r in rows)
    answered = sum(1 for r in ctx.data.rows if r["finish_reason"])
    return Finding(
        fid, "Answers cut at max_tokens", usd, usd * ctx.scale, "measured",
        "the metered cost of the answers that ended with finish_reason 'length' (an upper "
        "bound: what is lost if the cut answers are discarded)",
        {"requests": len(rows), "share_of_answers": round(len(rows) / max(answered, 1), 3),
         "completion_tokens": sum(r["completion_tokens"] or 0 for r in rows), "usd": usd},
        examples(rows),
        "# a client change: raise max_tokens where answers are cut, or ask for shorter "
        "answers\n# (the gateway caps answers without max_tokens at "
        "model_info.max_output_tokens)",
        caveats=["an answer cut on purpose (a classifier's first token) costs nothing extra"])


def failed_spend(ctx: Context) -> Finding | None:
    """Spend on requests that failed or were interrupted but were still charged."""
    rows = [r for r in ctx.data.rows if r["status"] in FAILED and _cost(r) > 0]
    if not rows:
        return None
    usd = sum(_cost(r) for r in rows)
    errors: dict[str, int] = defaultdict(int)
    for r in rows:
        errors[(r["error"] or r["status"])[:120]] += 1
    top = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    return Finding(
        "failed-spend", "Spend on failed requests", usd, usd * ctx.scale, "measured",
        "the metered cost of requests whose status is error, interrupted or cancelled",
        {"requests": len(rows), "usd": usd, "by_status": {
            s: sum(1 for r in rows if r["status"] == s) for s in FAILED},
         "top_errors": dict(top)},
        examples(rows),
        "general:\n  fallbacks: {<model_name>: [<cheaper or healthier group>]}\n"
        "model_list:\n  - model_name: <model_name>\n    params: {timeout_s: <longer>, "
        "max_retries: 1}   # fewer paid retries of the same failure",
        caveats=["read the top errors first: a client that disconnects mid-stream pays "
                 "for the tokens it received"])


__all__ = ["cache_repeats", "cut_answers", "failed_spend", "long_histories", "prefix_cache"]
