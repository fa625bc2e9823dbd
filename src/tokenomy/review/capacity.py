"""Findings about where traffic runs and what it is allowed to spend: traffic the router
rates easy priced on a dearer deployment, idle self-hosted capacity, and API keys that
will run out of budget before their period resets."""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict

from tokenomy.review.allocation import Allocation
from tokenomy.review.context import Context
from tokenomy.review.finding import Finding, Skipped, examples

# the router's reason: "auto: predicted quality Q >= tau T on D (difficulty X; a 0.91, ...)"
_ROUTE = re.compile(r"tau (?P<tau>[\d.]+) on (?P<chosen>\S+) \(difficulty [\d.]+; "
                    r"(?P<scores>.*)\)$")


def _scores(route: str | None) -> tuple[float, list[tuple[str, float]]] | None:
    """(tau, [(deployment, predicted quality)] cheapest first) from a route reason."""
    m = _ROUTE.search(route or "")
    if not m:
        return None
    pairs = []
    for part in m.group("scores").split(", "):
        name, _, q = part.rpartition(" ")
        try:
            pairs.append((name, float(q)))
        except ValueError:
            return None
    return float(m.group("tau")), pairs


def _group_of(ctx: Context, model_name: str) -> str | None:
    """The deployment id serving a model_name first (what the router's names refer to)."""
    return next((d.id for d in ctx.config.model_list if d.model_name == model_name), None)


def easy_traffic(ctx: Context) -> Finding | Skipped | None:
    """Routed requests whose predicted quality on the cheapest deployment cleared the
    router's tau, yet were served (and priced) by a dearer one: a fallback, or a
    deployment missing from the router's order. Repriced at the cheapest's rates."""
    routed = [(r, s) for r in ctx.data.rows if r["route"] and r["status"] == "ok"
              and not r["cache"] and (s := _scores(r["route"])) is not None]
    if not routed:
        return Skipped("router", "no request in the window was routed by `model: auto` "
                                 "(the ledger's route column is empty): nothing to rate")
    usd, rows, cheap_ids = 0.0, [], set()
    for r, (tau, pairs) in routed:
        cheapest, q = pairs[0]
        cheap = _group_of(ctx, cheapest)
        if q < tau or cheap is None or r["deployment"] == cheap:
            continue
        rate = ctx.rate(cheap)
        if rate is None:
            continue
        repriced = rate.cost(r["prompt_tokens"] or 0, r["completion_tokens"] or 0)
        if float(r["cost_usd"] or 0) > repriced:
            usd += float(r["cost_usd"] or 0) - repriced
            rows.append(r)
            cheap_ids.add(cheap)
    if not rows:
        return None
    return Finding(
        "router", "Traffic the router rates easy, priced on a dearer deployment", usd,
        usd * ctx.scale, "estimated",
        "each request's metered cost minus its tokens priced at the cheapest deployment "
        "the router rated good enough (predicted quality >= tau)",
        {"requests": len(rows), "cheaper_deployments": sorted(cheap_ids), "usd": usd,
         "routed_requests": len(routed)},
        examples(rows),
        "# these ran elsewhere after the router chose the cheaper deployment: keep it "
        "healthy and first in its group\nmodel_list:\n"
        + "".join(f"  - model_name: {ctx.deployment(c).model_name}   # first, with enough "
                  "params.parallel slots\n" for c in sorted(cheap_ids))
        + "general:\n  fallbacks: {}   # or a fallback as cheap as the chosen deployment",
        caveats=["quality is the router's prediction from its calibration, not measured on "
                 "these requests"])


def idle_capacity(ctx: Context, alloc: Allocation) -> Finding | None:
    """Self-hosted time billed with no request running (the allocation basis' idle line)."""
    bills = [b for b in alloc.self_hosted if b.idle_usd > 0.005 * max(b.bill_usd, 1e-9)]
    if not bills:
        return None
    usd = sum(b.idle_usd for b in bills)
    worst = min(bills, key=lambda b: b.utilization)
    return Finding(
        "idle-capacity", "Idle self-hosted capacity", usd, usd * ctx.scale, "measured",
        "$/hour x hours the deployments ran with no request in flight (allocation basis: "
        "the gateway's runs in the ledger minus the union of request intervals); an upper "
        "bound on the saving, reached only by stopping the machines while idle",
        {"deployments": {b.deployment: {
            "hours_run": round(b.hours_run, 4), "busy_hours": round(b.busy_hours, 4),
            "utilization": round(b.utilization, 4), "bill_usd": round(b.bill_usd, 8),
            "idle_usd": round(b.idle_usd, 8)} for b in bills}, "usd": usd},
        [],
        f"# {worst.deployment} was busy {worst.utilization:.1%} of its run: price the "
        "alternatives on this ledger's traffic\n"
        "#   tokenomy plan <model> --traffic ledger:<database_url>\n"
        "# then serve it autoscaled/serverless, or as an API deployment:\nmodel_list:\n"
        f"  - model_name: {ctx.deployment(worst.deployment).model_name}\n"
        "    params: {engine: openai, api_base: <url>, model: <id>}\n"
        "    model_info: {input_cost_per_token: <$>, output_cost_per_token: <$>}",
        caveats=["busy time counts a request from admission to its last token; a machine "
                 "that serves many requests at once is busy less than its load suggests"])


def _period_end(period: str | None, start: float | None) -> float | None:
    if not period or start is None:
        return None
    begin = dt.datetime.fromtimestamp(start, dt.UTC)
    if period == "daily":
        end = begin + dt.timedelta(days=1)
    elif period == "weekly":
        end = begin + dt.timedelta(days=7)
    else:
        end = (begin.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return end.timestamp()


def budget_runout(ctx: Context) -> Finding | None:
    """Keys whose spend rate in the window exhausts their budget before it resets."""
    from tokenomy.serve.budgets import current_spent

    now = ctx.data.window.until
    hours = ctx.observed_s / 3600.0
    spend: dict[str, float] = defaultdict(float)
    for r in ctx.data.rows:
        spend[r["key_id"]] += float(r["cost_usd"] or 0)
    at_risk, stake = {}, 0.0
    for key in ctx.data.keys:
        budget = key.get("budget_usd")
        if budget is None or key.get("revoked") or hours <= 0 or not spend[key["id"]]:
            continue
        period = key.get("budget_period")
        spent = (current_spent(key, now) if "budget_period" in key else key["spent_usd"])
        per_h = spend[key["id"]] / hours
        left = max(budget - spent - (key.get("reserved_usd") or 0), 0.0)
        out_at = now + left / per_h * 3600.0
        resets = _period_end(period, key.get("period_start"))
        if resets is not None and out_at >= resets:
            continue
        blocked_h = ((resets or now + 30 * 86_400) - out_at) / 3600.0
        stake += per_h * blocked_h
        at_risk[key["id"]] = {
            "name": key["name"], "budget_usd": budget, "spent_usd": spent,
            "spend_rate_usd_per_hour": per_h, "period": period or "lifetime",
            "runs_out_at": _iso(out_at), "resets_at": _iso(resets) if resets else None,
            "hours_refused": round(blocked_h, 2)}
    if not at_risk:
        return None
    first = next(iter(at_risk))
    return Finding(
        "budget-runout", "Keys that will run out before their budget resets", stake,
        stake, "estimated",  # already the stake until the reset, not extrapolated
        "each key's spend rate over the window, continued: the time its remaining budget "
        "lasts against its period end (a lifetime budget: the next 30 days); the $ is the "
        "traffic refused until the reset at that rate",
        {"keys": at_risk, "usd": stake}, [],
        f"# raise the budget, or give it a period that matches the spend:\n"
        f"tokenomy keys update {first} --budget <USD>",
        kind="risk",
        caveats=["a risk, not a saving: refused requests fail for the client"])


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="minutes")


__all__ = ["budget_runout", "easy_traffic", "idle_capacity"]
